"""Cost of the egress check: bytes through the worker's checking proxy vs. a direct read.

Every remote read of a catalog-chosen URL goes through `catalog/stac/egress.py`, a forward
proxy in the worker process that judges each connection and relays its bytes. This
measures what the relay costs: a local HTTP server serves `--megabytes` of random bytes;
each round reads them once directly and once through the proxy (requests, one
connection each, alternating order), and the figures are medians of the rounds. The
floor is the direct read of the same bytes in the same run. Loopback only: a real
object store is far slower than either, so this is the relay's upper bound on cost.

    .venv/bin/python benchmarks/egress.py [--megabytes 64] [--rounds 7]

The last line is JSON: direct_mb_per_s, egress_mb_per_s, egress_ratio, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import statistics
import threading
import time

import requests
from terracube.catalog.stac.egress import EgressProxy
from terracube.catalog.stac.href_hosts import allowance_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    data = os.urandom(args.megabytes * 2**20)

    class Serve(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/bytes"
    proxy = EgressProxy(allowance_of(["127.0.0.1"]))
    rates: dict[str, list[float]] = {"direct": [], "egress": []}
    for r in range(args.rounds):
        for mode in ("direct", "egress") if r % 2 == 0 else ("egress", "direct"):
            session = requests.Session()
            if mode == "egress":
                session.proxies = {"http": f"http://{proxy.address}"}
            started = time.perf_counter()
            got = len(session.get(url).content)
            seconds = time.perf_counter() - started
            assert got == len(data)
            rates[mode].append(got / seconds / 1e6)
    direct, egress = (statistics.median(rates[m]) for m in ("direct", "egress"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.megabytes} MiB over loopback HTTP, medians of {args.rounds} rounds")
    print(f"  direct read:              {direct:7.0f} MB/s")
    print(f"  through the egress check: {egress:7.0f} MB/s   ratio {egress / direct:.2f}")
    print(f"peak RSS {peak:.0f} MB")
    result = {
        "direct_mb_per_s": round(direct, 1),
        "egress_mb_per_s": round(egress, 1),
        "egress_ratio": round(egress / direct, 3),
        "peak_rss_mb": round(peak, 1),
    }
    print(json.dumps(result))
    proxy.close()
    server.shutdown()


if __name__ == "__main__":
    main()
