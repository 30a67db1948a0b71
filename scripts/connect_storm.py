#!/usr/bin/env python3
"""A burst of first connections against a freshly started server, again and again.

The fake upstream once segfaulted inside the Swift runtime's metadata lookup
(`swift_getTypeByMangledName`, called from `HTTPServer.addHandlers`) under the property test:
two event loops building their first connections' pipelines at once. Each round here starts a
new process (`fake-upstream`, or `serve` with `--event-loops 2` in front of it), so every type
is still unresolved, then opens CONNECTIONS sockets at once from as many threads, each sending
one request, and checks that every one is answered and the process is still alive.

usage: connect_storm.py BINARY [--rounds N] [--connections N]
Exit 0 when every round was answered in full; prints 'N passed, N failed'.
"""
import argparse, os, socket, sys, tempfile, threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proctools  # noqa: E402


def burst(port, connections, target):
    answered = []
    lock = threading.Lock()
    barrier = threading.Barrier(connections)

    def one():
        try:
            barrier.wait(5)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_storm_aaaaaaaaaaaaaaaaaaaa\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            with lock:
                answered.append(data.startswith(b"HTTP/1.1 "))
        except Exception:
            with lock:
                answered.append(False)

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answered.count(True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    checks = proctools.Checks()
    target = "/v1/organizations/users/storm%40example.com/api-keys"
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            fake, fake_port = proctools.start(args.binary, ["fake-upstream", "--port", "0"], os.path.join(tmp, "fake.log"))
            data = os.path.join(tmp, f"data-{round_}")
            proxy, port = proctools.start(args.binary, [
                "serve", "--port", "0", "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", data,
                "--event-loops", "2", "--access-log", "off"], os.path.join(tmp, "proxy.log"))
            through_proxy = burst(port, args.connections, target)
            to_fake = burst(fake_port, args.connections, target)
            alive = proxy.poll() is None and fake.poll() is None
            checks(f"round {round_}: {args.connections} first connections at once, through the proxy and to the fake",
                   alive and through_proxy == args.connections and to_fake == args.connections,
                   f"answered {through_proxy} and {to_fake}; proxy exit {proxy.poll()}, fake exit {fake.poll()}")
            proctools.stop(proxy)
            proctools.stop(fake)
    return checks.summary("connect storm")


if __name__ == "__main__":
    sys.exit(main())
