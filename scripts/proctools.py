"""Helpers the check scripts share: start the real binary and read its port, stop it."""
import re, signal, subprocess, time


def start(binary, args, log, env=None):
    """Runs `binary args` (with `env` instead of this process's environment when given), waits
    (60 s at most) for the URL it prints first, returns (process, port)."""
    proc = subprocess.Popen([binary] + args, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line or "")
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start; see {log}")


def stop(proc, sig=signal.SIGTERM, wait=15):
    """Sends `sig` and waits; kills it when it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Checks:
    """Named pass/fail checks that keep going after a failure."""

    def __init__(self):
        self.results = []

    def __call__(self, name, ok, why=""):
        self.results.append(ok)
        print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + why), flush=True)

    def summary(self, label):
        passed, failed = self.results.count(True), self.results.count(False)
        print(f"{label}: {passed} passed, {failed} failed")
        return 1 if failed else 0
