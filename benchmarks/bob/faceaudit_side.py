"""faceaudit's side of the cross-check against bob.measure: same scores; FMR/FNMR, threshold, EER."""

import json
import sys

import numpy as np

from _common import write_result
from faceaudit.metrics.rates import Threshold, counts_at, det_curve, global_threshold
from faceaudit.scoring.stats import PairStatistics, ScoreBins

out_dir = sys.argv[1]
data = np.load(f"{out_dir}/scores.npz")
gen, imp = data["genuine"].astype(np.float32), data["impostor"].astype(np.float32)
with open(f"{out_dir}/bob.json") as f:
    bob = json.load(f)
stats = PairStatistics(n_groups=1, bins=ScoreBins(), top_k=10**6)
stats.add_genuine(gen, np.zeros(len(gen)), np.arange(len(gen)))
stats.add_impostor_pairs(imp, np.zeros(len(imp), int), np.zeros(len(imp), int), np.ones(len(imp), int))
rows = {}
for t, (far, frr) in bob["farfrr"].items():
    c = counts_at(stats, Threshold(float(np.float32(float(t))), True, 0, len(imp)))
    ours = (c.false_matches[0] / len(imp), c.false_non_matches[0] / len(gen))
    rows[t] = {"faceaudit": ours, "bob": [far, frr]}
    print(f"t={t}: FMR/FNMR faceaudit {ours[0]:.6g} {ours[1]:.6g}, bob.measure farfrr {far:.6g} {frr:.6g}")
    assert abs(ours[0] - far) < 1e-12 and abs(ours[1] - frr) < 1e-12
th = global_threshold(stats, 1e-3)
c = counts_at(stats, th)
print(f"threshold for FMR <= 1e-3: faceaudit {th.value:.6f} (the smallest; FMR {th.fmr:.6g}), "
      f"bob far_threshold {bob['far_threshold_1e-3']:.6f}")
eer = det_curve(stats, 0).eer
print(f"EER: faceaudit {eer:.5f} (at bin edges), bob.measure {bob['eer']:.5f} (at eer_threshold)")
assert abs(eer - bob["eer"]) < 2e-3
write_result("bob_measure_check", {"farfrr": rows, "threshold_1e-3": {"faceaudit": th.value,
             "bob": bob["far_threshold_1e-3"]}, "eer": {"faceaudit": eer, "bob": bob["eer"]}})
