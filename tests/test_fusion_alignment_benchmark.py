"""benchmarks/fusion_alignment.py on smoke demo outputs (demo/configs/smoke.yaml): several folders give one row per
folder and the mean, spread and range per method; `--tune_on_val` chooses each alignment's setting on the folder's
validation split over the demo's own grid. The accuracies of a smoke model mean nothing; the table's shape does."""

import json
import os
import re
import shutil

import pytest

from benchmarks.fusion_alignment import main as fusion_alignment


SMOKE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "configs", "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_folders(tmp_path_factory):
    from demo.run import load_config, run_demo

    first = tmp_path_factory.mktemp("demo_smoke")
    run_demo(load_config(SMOKE), str(first), reload=False)
    second = tmp_path_factory.mktemp("demo_smoke_copy") / "out"  # a second "seed": the same model, relabelled
    shutil.copytree(first, second)
    results = json.load(open(second / "results.json"))
    json.dump(dict(results, seed=7), open(second / "results.json", "w"))
    return str(first), str(second), results


def test_several_folders_tuned_on_validation_give_rows_per_folder_and_spread(smoke_folders, capsys):
    first, second, results = smoke_folders
    runs = fusion_alignment([first, second, "--tune_on_val", "--batch_size", "16"])
    out = capsys.readouterr().out
    grid = results["config"]["evaluation"]
    size = len(grid["alphas"]) * len(grid["betas"]) * len(grid["layer_ranges"])
    for run in runs:
        assert set(run["settings"]) == {"right", "token"}
        for setting in run["settings"].values():  # chosen from the demo's grid, on the validation split
            assert setting["tuned_over"] == size and setting["val_n"] == 6
            assert setting["alpha"] in grid["alphas"] and setting["beta"] in grid["betas"]
            assert setting["layers"] in grid["layer_ranges"]
        assert run["count"]["all"] == 10 and run["max_new_tokens"] == grid["max_new_tokens"]
    # the same model twice: equal rows, zero spread
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["settings"] == runs[1]["settings"]
    assert "| seed 0 | all | 10 |" in out and "| seed 7 | all | 10 |" in out
    plain = runs[0]["test"]["plain"]["all"]
    assert f"| all | 10 | {plain:.3f} ± 0.000 [{plain:.3f}, {plain:.3f}] |" in out
    assert re.search(r"DEMON-format fixtures \(\d+ samples\)", out)


def test_a_fixed_setting_and_bad_folders(smoke_folders, capsys, tmp_path):
    first, _, _ = smoke_folders
    runs = fusion_alignment([first, "--alpha", "1.0", "--beta", "0.0", "--layers", "0", "4", "--limit", "4",
                             "--max_new_tokens", "4"])
    assert runs[0]["settings"]["token"] == {"alpha": 1.0, "beta": 0.0, "layers": [0, 4]}
    assert runs[0]["count"]["all"] == 4 and runs[0]["max_new_tokens"] == 4
    assert "| seed 0 | all | 4 |" in capsys.readouterr().out  # one folder: no std, the row still prints
    with pytest.raises(SystemExit, match="is not a demo output folder"):
        fusion_alignment([str(tmp_path)])
    with pytest.raises(SystemExit):
        fusion_alignment([first, "--tune_on_val", "--alpha", "1.0"])
