"""bob.measure's side of the cross-check (its own venv: bob.measure 6.1.1 pins numpy ~=1.26)."""

import json
import sys

import bob.measure as bm
import numpy as np

out_dir = sys.argv[1]
rng = np.random.default_rng(3)
genuine = np.clip(rng.normal(0.62, 0.11, 5000), -1, 1)
impostor = np.clip(rng.normal(0.08, 0.10, 300_000), -1, 1)
np.savez(f"{out_dir}/scores.npz", genuine=genuine, impostor=impostor)
out = {"farfrr": {}}
for t in (0.3, 0.4, 0.5):
    far, frr = bm.farfrr(impostor, genuine, t)
    out["farfrr"][str(t)] = [float(far), float(frr)]
out["eer_threshold"] = float(bm.eer_threshold(impostor, genuine))
far, frr = bm.farfrr(impostor, genuine, out["eer_threshold"])
out["eer"] = float((far + frr) / 2)
out["far_threshold_1e-3"] = float(bm.far_threshold(impostor, genuine, 1e-3))
with open(f"{out_dir}/bob.json", "w") as f:
    json.dump(out, f)
