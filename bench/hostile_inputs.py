"""What hostile inputs cost now: crafted model files through the loaders (in process, and through the
resource-limited child the API uses), and the worst envelope the open verify endpoint accepts.

Each crafted file is loaded in a fresh process so its peak RSS growth is its own. Prints one JSON object.

    .venv/bin/python bench/hostile_inputs.py
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROBE = """
import resource, sys, time
from pathlib import Path
fmt, path = sys.argv[1], Path(sys.argv[2])
import audit.suspects.loader as loader
from audit.suspects.base import SuspectError
if fmt == "safetensors":
    import audit.suspects.safetensors_loader
elif fmt == "onnx":
    import audit.suspects.onnx
else:
    import audit.suspects.skops_loader
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    loader.load_suspect_file(path, fmt)
    outcome = "loaded"
except SuspectError as exc:
    outcome = "refused: " + str(exc)[:90]
except BaseException as exc:
    outcome = type(exc).__name__
print(outcome)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
print(time.perf_counter() - t)
"""


def main() -> None:
    from audit.signing import load_or_create_signing_key, public_key_pem, sign_statement, verify_envelope
    from audit.suspects.base import SuspectError
    from audit.suspects.isolated import check_in_child
    from tests.utils import hostile_models

    files = {
        "safetensors_huge_architecture": ("safetensors", hostile_models.safetensors_asking_for_a_huge_architecture()),
        "safetensors_nested_header": ("safetensors", hostile_models.safetensors_with_a_nested_header()),
        "onnx_constant_of_shape": ("onnx", hostile_models.onnx_constant_of_shape()),
        "skops_zip_bomb_400MB": ("skops", hostile_models.skops_zip_bomb(50_000_000)),
    }
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fmt, data) in files.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            done = subprocess.run([sys.executable, "-c", PROBE, fmt, str(path)], cwd=REPO, capture_output=True,
                                  text=True, timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
            outcome, grown, seconds = (done.stdout.strip().splitlines() + ["?", "nan", "nan"])[:3]
            t = time.perf_counter()
            try:
                check_in_child(path, fmt)
                child = "accepted"
            except SuspectError as exc:
                child = "refused: " + str(exc)[:90]
            out[name] = {
                "bytes": len(data), "in_process": outcome, "peak_rss_growth_mib": round(float(grown), 1),
                "load_s": round(float(seconds), 3), "child_check": child,
                "child_check_s": round(time.perf_counter() - t, 2),
            }
        key = load_or_create_signing_key(Path(tmp) / "k.pem")
        pem = public_key_pem(key)
        # The largest envelope the endpoint takes: ~1 MiB with four signatures, the good one last.
        envelope = json.loads(sign_statement({"pad": "x" * 700_000}, [{"name": "s", "digest": {"sha256": "ab" * 32}}],
                                             key))
        sig = envelope["signatures"][0]
        forged = {"keyid": sig["keyid"], "sig": base64.b64encode(b"\0" * 64).decode()}
        envelope["signatures"] = [forged, forged, forged, sig]
        body = json.dumps(envelope).encode()
        t = time.perf_counter()
        verify_envelope(body, pem, max_signatures=4)
        out["verify_worst_accepted_envelope"] = {"bytes": len(body), "signatures": 4,
                                                 "seconds": round(time.perf_counter() - t, 4)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
