"""Host inline images: rewriting a 10 MB HTML body (data: images -> cid: parts) vs only
tokenising the same body with the stdlib's html.parser (the anchor: the alternative to
keypost.host.html_tags that was considered; it finds the tags and does nothing with them).

Bodies, each about 10 MB:
  images    a short letter with 4 embedded PNGs of ~2.5 MB each (base64 in src)
  tags      10 MB of tag-dense HTML (p/span/a/img with several attributes), no images
  strays    text full of stray '<', '<a "' and unfinished comments (the worst cases of
            the old regex scanner)

Contenders alternate round by round; medians and the ratio to the anchor are printed
with the load average.

    python bench/bench_inline_images.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import statistics
import time
from collections.abc import Callable
from html.parser import HTMLParser

from keypost.host.inline_images import extract_inline_images

MB = 1 << 20


def images_body() -> str:
    rnd = random.Random(1)
    parts = ["<html><body><p>Hello Bob,</p><p>the photos:</p>"]
    for n in range(4):
        blob = base64.b64encode(rnd.randbytes(int(2.5 * MB * 3 / 4))).decode()
        parts.append(f'<p><img src="data:image/png;filename=p{n}.png;base64,{blob}" '
                     f'alt="photo {n}" width="640"></p>')
    parts.append("</body></html>")
    return "".join(parts)


def tags_body() -> str:
    row = ('<p class="x" style="margin:0"><span lang="en">Some text &amp; more</span> '
           '<a href="https://example.com/a?b=1&amp;c=2" title="link">a link</a> '
           '<img src="https://example.com/i.png" alt="i" width="10" height="10"></p>\n')
    return row * (10 * MB // len(row))


def strays_body() -> str:
    row = '1 < 2 and <a "quoted <!- <b x=1 and a < b > c; '
    return row * (10 * MB // len(row))


def rewrite(body: str) -> None:
    extract_inline_images(body, "example.com")


def html_parser(body: str) -> None:
    parser = HTMLParser(convert_charrefs=False)
    parser.feed(body)
    parser.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    bodies = {"images": images_body(), "tags": tags_body(), "strays": strays_body()}
    contenders: dict[str, Callable[[str], None]] = {
        "html_tags rewrite": rewrite, "html.parser (anchor)": html_parser}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for body_name, body in bodies.items():
            for name, run in contenders.items():
                start = time.perf_counter()
                run(body)
                times.setdefault((body_name, name), []).append(time.perf_counter() - start)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'body':8} {'MB':>6} {'contender':22} {'median ms':>10} {'vs anchor':>10}")
    for body_name, body in bodies.items():
        anchor = statistics.median(times[(body_name, "html.parser (anchor)")])
        for name in contenders:
            median = statistics.median(times[(body_name, name)])
            print(f"{body_name:8} {len(body) / MB:6.1f} {name:22} {median * 1000:10.1f} "
                  f"{median / anchor:9.3f}x")


if __name__ == "__main__":
    main()
