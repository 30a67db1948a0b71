"""A throwaway PostgreSQL server for the Python checks, through scripts/postgres.sh, and SQL
through `psql` (no driver to install).

    with pgtools.Postgres() as pg:          # initdb in a temp dir, start on a free port
        pg.psql("CREATE ROLE r LOGIN PASSWORD 'pw'")
        url = pg.url_for("r", "pw")         # postgres://r:pw@127.0.0.1:PORT/postgres?sslmode=disable
        pg.stop(); pg.start()               # same directory, same port
    # stopped (by the PID in its directory) and removed
"""
import os, random, shutil, socket, subprocess, tempfile, threading, time, urllib.parse

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

    def url_for(self, role, password, database="postgres", port=None, **params):
        """A URL for `role` on this server (or on `port`, a relay's), as a proxy takes it
        (`sslmode=disable` unless given)."""
        query = {"sslmode": "disable", **params}
        return (f"postgres://{urllib.parse.quote(role, safe='')}:{urllib.parse.quote(password, safe='')}"
                f"@127.0.0.1:{port or self.port}/{database}?{urllib.parse.urlencode(query)}")

    def run_psql(self, sql, user="postgres", password=None, database="postgres", timeout=30):
        """Runs `sql` with psql (stop at the first error, unaligned, tuples only) as `user` over
        TCP on loopback; returns the CompletedProcess (check returncode, stdout, stderr)."""
        if self.port is None:
            raise PostgresError("the server has not been started")
        env = {"PGAPPNAME": "pgtools", **os.environ, "PGCONNECT_TIMEOUT": "5", "PGSSLMODE": "disable"}
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


class Relay:
    """A TCP relay on 127.0.0.1 in front of a PostgreSQL port that can hold back what the server
    sends (announcements, query results) by a random delay per chunk, `delay = (low, high)` in
    seconds, changeable at any time; order within a connection is kept. Connections whose
    startup message contains `marker` (e.g. b"mixpeek-proxy listen", an application_name) get
    `marked_delay` instead. Clients connect to `port`; when the server cannot be reached the
    client's connection is closed at once."""

    def __init__(self, target_port, marker=None):
        self.target_port = target_port
        self.marker = marker
        self.delay = (0.0, 0.0)
        self.marked_delay = (0.0, 0.0)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._sockets, self._lock, self._closed = set(), threading.Lock(), False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, server))
            connection = {"marked": False, "first": True}
            threading.Thread(target=self._pump, args=(client, server, None, connection), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, connection, None), daemon=True).start()

    def _pump(self, source, sink, held, startup):
        """Copies source to sink; `held`: the connection whose answers are held back;
        `startup`: the connection whose first chunk (the startup message) is looked at."""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if startup is not None and startup["first"]:
                    startup["first"] = False
                    startup["marked"] = bool(self.marker) and self.marker in data
                if held is not None:
                    low, high = self.marked_delay if held["marked"] else self.delay
                    if high > 0:
                        time.sleep(random.uniform(low, high))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
                with self._lock:
                    self._sockets.discard(sock)

    def close(self):
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


if __name__ == "__main__":
    # Self-check: start, SQL as the superuser and as a password role, restart on the same
    # port, SQL through a relay that holds answers back, stop, removed.
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
        relay = Relay(pg.port, marker=b"pgtools-slow")
        relay.marked_delay = (0.2, 0.3)
        saved, pg.port = pg.port, relay.port
        started = time.monotonic()
        assert pg.psql("SELECT 41 + 1") == "42" and time.monotonic() - started < 0.2
        os.environ["PGAPPNAME"] = "pgtools-slow"
        started = time.monotonic()
        assert pg.psql("SELECT 41 + 1") == "42"
        assert time.monotonic() - started >= 0.2
        del os.environ["PGAPPNAME"]
        pg.port = saved
        relay.close()
        directory = pg.directory
    assert not os.path.exists(directory)
    print("pgtools: ok")
