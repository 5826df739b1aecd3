"""The minimal client of docs/wire-format.md, run as written (its endpoint aside) in a
process of its own against a bare publisher: it decodes every encoding, and a zstd
payload that declares a size other than its map's (a decompression bomb) is skipped
instead of being decompressed. Other-language clients copy this sketch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zstandard

from stream.wire import LabelsHeader, pack_class_table, pack_labels
from stream.wire_payload import PayloadEncoder
from tests.stream.test_pubsub import TABLE, RawPublisher

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def doc_client_source(endpoint: str) -> str:
    text = DOC.read_text()
    section = text.split("## A minimal client without segstream", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code, "no python block in the minimal-client section"
    src = code.group(1)
    assert '"tcp://localhost:5555"' in src
    return src.replace('"tcp://localhost:5555"', json.dumps(endpoint))


def _labels(seq: int, encoding: str, labels: np.ndarray, payload: bytes | None = None) -> list:
    h = LabelsHeader("front", seq, 1, 2, 3, 4, labels.shape, encoding, TABLE.id, 0, "p1")
    body = payload if payload is not None else bytes(PayloadEncoder(encoding).encode(labels))
    return pack_labels(h, body)


def test_the_docs_minimal_client_decodes_maps_and_skips_a_zstd_bomb(tmp_path: Path) -> None:
    pub = RawPublisher()
    script = tmp_path / "client.py"
    script.write_text(doc_client_source(pub.endpoint))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pub.wait_subscribed()
        labels = np.arange(24, dtype=np.uint8).reshape(4, 6) % 11
        bomb = zstandard.ZstdCompressor(write_content_size=True,
                                        write_checksum=True).compress(bytes(50_000_000))
        pub.send(pack_class_table(TABLE))
        pub.send(_labels(0, "zstd", labels, payload=bomb))  # declares 50 MB for a 4x6 map
        for seq, enc in enumerate(("raw", "rle", "zstd"), start=1):
            pub.send(_labels(seq, enc, labels))
        time.sleep(1.0)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        pub.close()
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["front", "1"], ["front", "2"],
                                                    ["front", "3"]], (out, err)
    assert all("(4, 6) ['sky', 'building', 'pole']" in line for line in lines)
    assert "Traceback" not in err
