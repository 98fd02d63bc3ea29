"""Worker memory against 100 MB carrier answers: RSS growth of our client beside normal answers, one run.

    python bench/hostile_carrier.py [--queries 8]

Each side runs in a fresh process of its own: --queries queries to the hostile carrier
(tests/support/hostile_carrier.py) answering GOOD records, then the same number answering HUGE
(100 MB) bodies, then, as the baseline, the same HUGE bodies read whole with httpx's plain
`response.content` (the client before its size cap). Prints the RSS growth of each and the ratios.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, sys
import httpx, psutil
from app.services.carriers.base import CarrierError
from app.services.carriers.kuaidi100 import Kuaidi100Client
from tests.support.hostile_carrier import HostileCarrier

mode, side, queries = sys.argv[1], sys.argv[2], int(sys.argv[3])
server = HostileCarrier().start()
client = Kuaidi100Client("C1", "K1", server.url, timeout=60)
gc.collect()
before = psutil.Process().memory_info().rss
for i in range(queries):
    form = client.request_form("ems", f"{mode}{i}")
    if side == "ours":
        try:
            client.query("ems", f"{mode}{i}")
        except CarrierError:
            pass
    else:
        httpx.post(server.url, data=form, timeout=60).content
gc.collect()
print(json.dumps({"growth": psutil.Process().memory_info().rss - before}))
server.stop()
"""


def growth(mode: str, side: str, queries: int) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, side, str(queries)], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["growth"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=8)
    args = parser.parse_args()
    mib = 1024 * 1024
    normal = growth("GOOD", "ours", args.queries)
    huge = growth("HUGE", "ours", args.queries)
    naive = growth("HUGE", "naive", args.queries)
    print(f"{args.queries} queries each; RSS growth: normal bodies {normal / mib:.1f} MiB, "
          f"100 MB bodies {huge / mib:.1f} MiB, 100 MB bodies read whole (no cap) {naive / mib:.1f} MiB")
    floor = max(normal, mib)  # growth below 1 MiB is noise
    print(f"ratio 100 MB / normal (ours): {huge / floor:.2f}   ratio no-cap / ours on 100 MB: {naive / max(huge, mib):.1f}")


if __name__ == "__main__":
    main()
