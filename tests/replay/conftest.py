"""Fixtures for the bench: measured-like quality profiles and a small two-tier scenario, so
replays run in milliseconds without the model or the shipped data files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shared_workload import SMALL, N, R

from evicctl.config import DEFAULT_CODECS
from evicctl.manager.codecs.names import parse_codec_name
from evicctl.replay.profiles import profiles_from_scores
from evicctl.replay.scenario import scenario_from_dict

# Mean quality per codec, shaped like DESIGN §8's measurements (int8 nearly free, int4 and
# token dropping lossy, harder dropping worse).
BASE = {"none": 1.0, "int8": 0.99, "int4": 0.85}


def codec_mean(codec: str) -> float:
    if codec in BASE:
        return BASE[codec]
    parts = parse_codec_name(codec)
    if parts.scorer is None and parts.channel_ratio == 0:  # another quantizer (int3, ...): lossier than int4
        return 0.75
    # dropping tokens or key channels: the harder, the lossier
    return (0.95 - 0.3 * max(parts.ratio, parts.channel_ratio)) * (0.99 if codec.endswith("+int8") else 1.0)


def measured_scores(n_contexts: int = 12, questions: int = 6, seed: int = 0) -> list[dict[str, list[float]]]:
    """Per-question scores: a per-context sensitivity plus question noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_contexts):
        offset = rng.normal(0, 0.05)
        out.append({
            c: [1.0] * questions if c == "none"
            else np.clip(rng.normal(codec_mean(c) + offset, 0.03, questions), 0, 1).round(4).tolist()
            for c in DEFAULT_CODECS
        })
    return out


@pytest.fixture(scope="session")
def profiles():
    scores = measured_scores()
    return profiles_from_scores(
        codecs=DEFAULT_CODECS, scores=scores, context_ids=tuple(f"m{i}" for i in range(len(scores))),
        tokens=[1000 + 40 * i for i in range(len(scores))], source="test fixture",
    )


@pytest.fixture
def profiles_file(tmp_path: Path) -> Path:
    """The same kind of profiles, in the file format measure_profiles writes."""
    scores = measured_scores()
    doc = {
        "format": 1, "model": "fixture", "metric": "teacher-forced", "questions_per_context": 6,
        "codecs": list(DEFAULT_CODECS),
        "contexts": [{"id": f"m{i}", "source": "squad", "tokens": 1000 + 40 * i, "scores": s} for i, s in enumerate(scores)],
    }
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def scenario():
    return scenario_from_dict(SMALL)


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    """The small scenario as a cost file (`--scenario path.json`)."""
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


@pytest.fixture
def slow_disk_scenario():
    """A disk slower than recomputing: a sane policy must never load from it."""
    d = json.loads(json.dumps(SMALL))
    d["tiers"][1]["read_bps"] = 5e6
    return scenario_from_dict(d)



@pytest.fixture
def catalog(scenario, profiles):
    from evicctl.replay.catalog import build_catalog

    return build_catalog(scenario, profiles, N, seed=1)


@pytest.fixture
def trace(scenario):
    from evicctl.replay.trace import zipf_trace

    return zipf_trace(N, R, qps=1.0, zipf=1.0, seed=3, query_tokens=scenario.query_tokens)
