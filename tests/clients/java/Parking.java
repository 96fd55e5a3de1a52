// pgjdbc keeping one connection open across a suspend, for
// tests/integration/test_parking_clients.py.
//
// Usage: java -cp <dir>:/usr/share/java/postgresql.jar Parking JDBC_URL USER PASSWORD
// Reads one command a line from stdin and answers each with one tab-separated line of
// key=value pairs:
//   setup  sets search_path, statement_timeout, TimeZone and application_name, then
//          executes one PreparedStatement 6 times (pgjdbc's default prepareThreshold is 5:
//          from then on it binds a named server-side statement, S_1...)
//   check  reports the same, then executes that PreparedStatement once more
//   quit   closes the connection and exits
// Any failure is an exception: a stack trace and a non-zero exit.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGStatement;

public final class Parking {
    private static final String STATE =
            "select pg_backend_pid(), current_setting('search_path'),"
                    + " current_setting('statement_timeout'), current_setting('TimeZone'),"
                    + " current_setting('application_name'),"
                    + " (select string_agg(name, ',' order by name) from pg_prepared_statements"
                    + "  where statement = 'select $1::int * 2')";

    private Parking() {}

    private static int twice(PreparedStatement ps, int n) throws SQLException {
        ps.setInt(1, n);
        try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            return rs.getInt(1);
        }
    }

    private static String state(Connection conn) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(STATE)) {
            rs.next();
            return "pid=" + rs.getInt(1)
                    + "\tsearch_path=" + rs.getString(2)
                    + "\tstatement_timeout=" + rs.getString(3)
                    + "\tTimeZone=" + rs.getString(4)
                    + "\tapplication_name=" + rs.getString(5)
                    + "\tstatements=" + rs.getString(6);
        }
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        try (Connection conn = DriverManager.getConnection(args[0], props);
                PreparedStatement ps = conn.prepareStatement("select ?::int * 2")) {
            String line;
            while ((line = in.readLine()) != null) {
                String out;
                if (line.equals("setup")) {
                    try (Statement st = conn.createStatement()) {
                        st.execute("set search_path = jdbc, public");
                        st.execute("set statement_timeout = '8s'");
                        st.execute("set TimeZone = 'Asia/Tokyo'");
                        st.execute("set application_name = 'jdbc-parked'");
                    }
                    int result = 0;
                    for (int i = 0; i < 6; i++) {
                        result = twice(ps, 21);
                    }
                    out = state(conn) + "\tresult=" + result;
                } else if (line.equals("check")) {
                    String before = state(conn);
                    out = before + "\tresult=" + twice(ps, 21);
                } else if (line.equals("quit")) {
                    return;
                } else {
                    throw new IllegalArgumentException("unknown command: " + line);
                }
                out += "\tserver_prepared=" + ps.unwrap(PGStatement.class).isUseServerPrepare()
                        + "\tbackend_pid=" + conn.unwrap(PGConnection.class).getBackendPID();
                System.out.println(out);
                System.out.flush();
            }
        }
    }
}
