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


def cpu_seconds(pid):
    """User and system CPU seconds process `pid` has used so far (/proc/PID/stat)."""
    import os
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_figures(out):
    """wrk's output (run with --latency) read: requests, req/s, p50 and p99 in ms, and how
    many answers were not 2xx or 3xx."""
    def ms(text):
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
            "p99": ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
            "bad": int(bad.group(1)) if bad else 0}


def side_by_side(binaries, rounds, run, line):
    """Builds side by side: the fake upstream (from the first binary, so that every build meets
    the same), then for each round each binary in turn, `run(binary, fake_port, label)`, its
    result printed as `line(result)`. Returns {binary: [result, ...]}."""
    import os, tempfile, shutil
    work = tempfile.mkdtemp(prefix="mixpeek-ab-fake-")
    fake, fake_port = start(binaries[0], ["fake-upstream", "--port", "0"], os.path.join(work, "fake.log"))
    runs = {binary: [] for binary in binaries}
    try:
        for round_number in range(rounds):
            for index, binary in enumerate(binaries):
                result = run(binary, fake_port, f"r{round_number}b{index}")
                runs[binary].append(result)
                print(f"round {round_number + 1} {binary}: {line(result)}", flush=True)
    finally:
        stop(fake)
        shutil.rmtree(work, ignore_errors=True)
    return runs
