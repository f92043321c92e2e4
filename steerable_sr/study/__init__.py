r"""The study: model kinds compared on the same data, and symmetry discovery with relaxed kinds.

Run from ``steerable-sr compare`` and ``steerable-sr discover`` (arguments:
:mod:`steerable_sr.cli.study`; also ``scripts/compare.py``).

* :mod:`~steerable_sr.study.config`: :class:`~steerable_sr.study.config.StudyConfig` (the settings
  shared by both studies) and the kinds a study accepts;
* :mod:`~steerable_sr.study.runs`: one training run (``train_one``: test metrics, validation curve,
  step time, spectra) and the build-time measurement in fresh processes;
* :mod:`~steerable_sr.study.compare`: :func:`~steerable_sr.study.compare.run_compare` trains every
  kind with its preset (matched parameter budgets, see ``steerable_sr/presets``) and every seed on the same
  dataset, crops, batches, optimiser and epochs, and writes ``results.json`` (every run and the
  aggregate: mean, std, min, max over seeds), ``results.md`` (one table, mean +- std over seeds:
  parameters, cold / warm build time, step time, test MAE, RMSE, relative L2, spectrum error,
  divergence residual, equivariance error, plus the trilinear baseline and the truth's divergence
  floor), ``val_curves.png`` and ``spectra.png``;
* :mod:`~steerable_sr.study.discover`: :func:`~steerable_sr.study.discover.run_discover` trains
  relaxed kinds with an equivariance penalty on one or more datasets and writes, per dataset and
  kind, the :func:`steerable_sr.symmetry.symmetry_report` of the learned relaxed weights
  (``discover.md`` / ``discover.json``) and the trained weights, optionally with the
  :mod:`steerable_sr.score_test` of the training data's gradient;
* :mod:`~steerable_sr.study.output`: the output directory of both, refused before any training
  when it holds results (unless ``overwrite``), with the finished runs in ``partial/`` while a study
  trains and all outputs published together at the end.

Timings: *cold build* is ``build_model`` in a fresh Python process with an empty kernel-basis cache
(``STEERABLE_SR_CACHE`` pointing to a new directory; escnn's own group cache in site-packages is
assumed present, as after installation); *warm build* is the same in a second fresh process that
finds the cache filled. *Step time* is the median wall time of a training step (forward, loss,
backward, optimiser step), the first two steps of each run excluded. All metrics are on the test
split, in the data's normalised units (velocity / training rms), as logged by
:class:`steerable_sr.training.SuperResolutionModule` (definitions: :mod:`steerable_sr.metrics`).
"""
