"""The README's figures for the synthetic-demo model are the ones its card and
benchmarks/bench_demo_model.py (benchmarks/results/demo_model.json) record: no number
in that paragraph is typed by hand."""
import json
import re
from pathlib import Path

import pytest

from deepbleed_bids.model.weights import sha256_file
from deepbleed_bids.model.zoo import BUNDLED_DIR

TOP = Path(__file__).resolve().parent.parent
RESULTS = TOP / "benchmarks" / "results" / "demo_model.json"


@pytest.fixture(scope="module")
def recorded():
    return json.loads(RESULTS.read_text()), json.loads((BUNDLED_DIR / "synthetic-demo.json").read_text())


@pytest.fixture(scope="module")
def paragraph():
    """The README's synthetic-demo bullet (from its name to the next bullet)."""
    readme = (TOP / "README.md").read_text()
    models = readme.split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"^- `synthetic-demo`.*?(?=^- )", models, re.S | re.M).group(0)


def test_results_are_of_the_bundled_weights(recorded):
    results, card = recorded
    assert results["model"]["sha256"] == card["sha256"] == sha256_file(BUNDLED_DIR / "synthetic-demo.weights.h5")
    assert results["model"]["card_val_dice"] == round(card["validation"]["val_dice"], 3)
    assert results["script"] == "benchmarks/bench_demo_model.py"
    assert sorted(s["participant_id"] for s in results["validation"]["scans"]) == sorted(card["split"]["validation"])


def test_readme_quotes_the_recorded_figures(recorded, paragraph):
    results, card = recorded
    text = " ".join(paragraph.split())
    v, held = results["validation"], results["held_out"]
    expected = [
        "benchmarks/bench_demo_model.py",
        f"{v['participants']} validation participants",
        f"median Dice {v['dice_median_with_lesion']:.3f} over the {v['with_lesion']} with a lesion "
        f"(mean {v['dice_mean_with_lesion']:.3f}",
        f"mean Dice {v['dice_mean_all']:.3f} over all {v['participants']}",
        f"volume RMSE {v['volume_rmse_ml']:.3f} mL",
        f"`val_dice` {card['validation']['val_dice']:.3f}",
        f"Dice {held['deep']['dice']:.3f} and {held['lobar']['dice']:.3f}",
        f"volume {held['deep']['volume_ml']:.2f} vs {held['deep']['reference_volume_ml']:.2f} mL and "
        f"{held['lobar']['volume_ml']:.2f} vs {held['lobar']['reference_volume_ml']:.2f} mL",
        f"{held['normal']['volume_ml']:.3f} mL on the head without hemorrhage",
        f"{card['parameters']:,} parameters",
        f"{card['epochs']['completed']} epochs",
        f"epoch {card['epochs']['exported']} exported",
    ]
    for phrase in expected:
        assert phrase in text, f"README synthetic-demo paragraph lacks {phrase!r}"


def test_no_figure_in_the_paragraph_is_unrecorded(recorded, paragraph):
    """Every decimal figure is one of the recorded values (or one of the test bounds quoted)."""
    results, card = recorded
    text = paragraph.split("```")[0] + paragraph.split("```")[-1]  # the commands are not figures
    v, held = results["validation"], results["held_out"]
    allowed = {f"{x:.3f}" for x in (v["dice_median_with_lesion"], v["dice_mean_with_lesion"],
                                    v["dice_mean_all"], v["volume_rmse_ml"],
                                    card["validation"]["val_dice"], held["normal"]["volume_ml"])}
    for name in ("deep", "lobar"):
        allowed |= {f"{held[name]['dice']:.3f}", f"{held[name]['volume_ml']:.2f}",
                    f"{held[name]['reference_volume_ml']:.2f}"}
    allowed |= {"0.85", "1.4"}  # tests/test_demo_model.py's Dice bound; the weights file's MB
    found = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text)
    assert found and set(found) <= allowed, sorted(set(found) - allowed)
    # the run times are the card's own notes
    for minutes in re.findall(r"(\d+) min\b", text):
        assert f"{minutes} min" in card["notes"]
