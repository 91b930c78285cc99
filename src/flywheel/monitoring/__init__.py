"""Monitoring: is the data a model sees in production still the data it was trained on?

A monitor compares windows of served features with a reference profile captured at training time:

* :mod:`flywheel.monitoring.profile` builds the :class:`ReferenceProfile` once, from the
  training features (quantile bins, a quantile grid, category frequencies, missing rates), and
  stores it as canonical JSON next to the model version;
* :mod:`flywheel.monitoring.checks` holds the drift statistics as small pure functions
  registered by name (``"psi"``, ``"ks"``, ``"chi2"``);
* :mod:`flywheel.monitoring.drift` runs them per feature (:func:`compare`) and decides by effect
  size (PSI), reporting Bonferroni-corrected p-values as secondary evidence;
* :mod:`flywheel.monitoring.report` renders a :class:`DriftReport` as a self-contained HTML page
  with a bar chart per feature.

Nothing is re-exported here, so importing the package does not import numpy or pandas; import
from the modules above.
"""

from __future__ import annotations

__all__: list[str] = []
