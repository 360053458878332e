"""Shared fixtures: real installed-package metadata for plugin tests, the shared real-data folder, and a small
cohort of bag feature files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmamil import registry
from cmamil.synthetic import PlantedSignal, write_planted_cohort

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def install_dist(tmp_path, monkeypatch):
    """Install a small distribution on sys.path (dist-info metadata + modules), as pip would lay it out."""

    def install(name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None) -> Path:
        site = tmp_path / "site"
        dist_info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        sections = [
            f"[{group}]\n" + "".join(f"{ep} = {value}\n" for ep, value in eps.items())
            for group, eps in entry_points.items()
        ]
        (dist_info / "entry_points.txt").write_text("\n".join(sections))
        for filename, source in (modules or {}).items():
            (site / filename).write_text(source)
        monkeypatch.syspath_prepend(str(site))
        for reg in (registry.models, registry.aggregators):
            reg.refresh()
        return site

    yield install
    for reg in (registry.models, registry.aggregators):
        reg.refresh()


@pytest.fixture
def planted_files(tmp_path):
    """12 feature files (6 patients of 2 slides) with labels.csv."""
    folder = tmp_path / "feats"
    labels = write_planted_cohort(folder, 12, slides_per_patient=2, dim=8, n_coarse=2,
                                  signal=PlantedSignal("20x", tiles=2, shift=5.0))
    return folder, labels


@pytest.fixture
def notices(caplog):
    """`caplog` that holds cmamil's notices (`cmamil.notices.notice`), also after a CLI test in the same process
    stopped them propagating to the root logger."""
    import logging

    from cmamil.notices import NOTICE_LOGGER

    logger = logging.getLogger(NOTICE_LOGGER)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger=NOTICE_LOGGER):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)
