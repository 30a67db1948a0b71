"""A throwaway PostgreSQL server for the Python checks, through scripts/postgres.sh, and SQL
through `psql` (no driver to install).

    with pgtools.Postgres() as pg:          # initdb in a temp dir, start on a free port
        pg.psql("CREATE ROLE r LOGIN PASSWORD 'pw'")
        url = pg.url_for("r", "pw")         # postgres://r:pw@127.0.0.1:PORT/postgres?sslmode=disable
        pg.stop(); pg.start()               # same directory, same port
    # stopped (by the PID in its directory) and removed
"""
import os, shutil, subprocess, tempfile, urllib.parse

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "postgres.sh")


class PostgresError(RuntimeError):
    pass


def _run(args, timeout):
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise PostgresError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


class Postgres:
    """One server in a directory of its own (a new one in /tmp unless `directory` is given:
    as root the server runs as `postgres`, which must be able to reach it)."""

    def __init__(self, directory=None):
        self.directory = directory or tempfile.mkdtemp(prefix="mixpeek-pg-", dir="/tmp")
        self._made_directory = directory is None
        self.url = None
        self.port = None
        self._psql = os.path.join(_run(["bash", SCRIPT, "bindir"], 30), "psql")
        if not os.access(self._psql, os.X_OK):
            self._psql = shutil.which("psql") or "psql"

    def start(self):
        """Starts the server (initdb the first time), waits until it accepts connections,
        returns the superuser URL. A restart keeps the port."""
        self.url = _run(["bash", SCRIPT, "start", self.directory], 120)
        self.port = urllib.parse.urlsplit(self.url).port
        return self.url

    def stop(self):
        """Fast shutdown, waiting until the server has exited."""
        _run(["bash", SCRIPT, "stop", self.directory], 60)

    def restart(self):
        self.stop()
        return self.start()

    def running(self):
        """Whether the server accepts connections now."""
        try:
            return self.psql("SELECT 1", timeout=5) == "1"
        except (PostgresError, subprocess.TimeoutExpired):
            return False

    def url_for(self, role, password, database="postgres", **params):
        """A URL for `role` on this server, as a proxy takes it (`sslmode=disable` unless given)."""
        query = {"sslmode": "disable", **params}
        return (f"postgres://{urllib.parse.quote(role, safe='')}:{urllib.parse.quote(password, safe='')}"
                f"@127.0.0.1:{self.port}/{database}?{urllib.parse.urlencode(query)}")

    def run_psql(self, sql, user="postgres", password=None, database="postgres", timeout=30):
        """Runs `sql` with psql (stop at the first error, unaligned, tuples only) as `user` over
        TCP on loopback; returns the CompletedProcess (check returncode, stdout, stderr)."""
        if self.port is None:
            raise PostgresError("the server has not been started")
        env = dict(os.environ, PGCONNECT_TIMEOUT="5", PGSSLMODE="disable", PGAPPNAME="pgtools")
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password
        args = [self._psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(self.port), "-U", user, "-d", database, "-c", sql]
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)

    def psql(self, sql, user="postgres", password=None, database="postgres", timeout=30):
        """Runs `sql` and returns its output (rows one a line, fields split by `|`); raises
        PostgresError when psql fails."""
        result = self.run_psql(sql, user, password, database, timeout)
        if result.returncode != 0:
            raise PostgresError(f"psql as {user}: {result.stderr.strip()}")
        return result.stdout.strip()

    def cleanup(self):
        """Stops the server (if it runs) and removes a directory this object made."""
        try:
            self.stop()
        finally:
            if self._made_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


if __name__ == "__main__":
    # Self-check: start, SQL as the superuser and as a password role, restart on the same
    # port, stop, removed.
    with Postgres() as pg:
        print("url", pg.url)
        pg.psql("CREATE ROLE pgtools_check LOGIN PASSWORD 'pw'")
        assert pg.psql("SELECT current_user", user="pgtools_check", password="pw") == "pgtools_check"
        assert pg.run_psql("SELECT 1", user="pgtools_check", password="wrong").returncode != 0
        assert pg.psql("SHOW fsync") == "on"
        port = pg.port
        pg.stop()
        assert not pg.running()
        pg.start()
        assert pg.port == port and pg.running()
        directory = pg.directory
    assert not os.path.exists(directory)
    print("pgtools: ok")
