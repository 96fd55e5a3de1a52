// pgjdbc through pgwake, for tests/integration/test_client_matrix.py.
//
// Usage: java -cp <dir>:/usr/share/java/postgresql.jar Matrix JDBC_URL USER PASSWORD
// Runs a query, a server-side prepared statement, a committed and a rolled-back
// transaction, and a Statement.cancel() of pg_sleep; prints one key=value line per step.
// Any failure is an exception: a stack trace and a non-zero exit.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.postgresql.PGStatement;

public final class Matrix {
    private Matrix() {}

    private static String scalar(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        // Use a named server-side statement from the first execution on (default: 5th).
        props.setProperty("prepareThreshold", "1");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            System.out.println("query=" + scalar(conn, "select current_user"));

            try (PreparedStatement ps = conn.prepareStatement("select ?::int + 1")) {
                ps.setInt(1, 41);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    System.out.println("prepared=" + rs.getInt(1));
                }
                System.out.println(
                        "server_prepared=" + ps.unwrap(PGStatement.class).isUseServerPrepare());
                // pgjdbc names its statements S_1, S_2...; find this one by its text.
                System.out.println(
                        "named_statements="
                                + scalar(
                                        conn,
                                        "select count(*) from pg_prepared_statements"
                                                + " where statement = 'select $1::int + 1'"));
            }

            try (Statement st = conn.createStatement()) {
                st.execute("create table t (x int)");
                conn.setAutoCommit(false);
                st.execute("insert into t values (1)");
                conn.commit();
                st.execute("insert into t values (2)");
                System.out.println("inside=" + scalar(conn, "select count(*) from t"));
                conn.rollback();
                conn.setAutoCommit(true);
                System.out.println(
                        "transaction=" + scalar(conn, "select string_agg(x::text, ',') from t"));
            }

            ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
            try (Statement st = conn.createStatement()) {
                timer.schedule(
                        () -> {
                            try {
                                st.cancel();
                            } catch (SQLException e) {
                                e.printStackTrace();
                            }
                        },
                        500,
                        TimeUnit.MILLISECONDS);
                long started = System.nanoTime();
                try {
                    st.execute("select pg_sleep(30)");
                    System.out.println("cancel=none");
                } catch (SQLException e) {
                    System.out.println("cancel=" + e.getSQLState());
                }
                System.out.println("cancel_ms=" + (System.nanoTime() - started) / 1_000_000);
            } finally {
                timer.shutdownNow();
            }
            System.out.println("after_cancel=" + scalar(conn, "select 1"));
        }
    }
}
