"""Command line: ``python -m analysis --experiment NAME`` (the MLproject's `analyze` entry point).

Reads the final runs of an MLflow experiment (any tracking URI: MLFLOW_TRACKING_URI, --tracking-uri, or
the harness's default sqlite:///mlflow.db), writes the report folder and logs it as an MLflow run tagged
stage=analysis in the same experiment.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import warnings
from pathlib import Path

from harness.schema import Metric

log = logging.getLogger("analysis")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="the MLflow experiment of a study (default name: the study's)")
    p.add_argument("--study", default="", help="analyse only this study's runs (needed when an experiment holds several)")
    p.add_argument("--metric", default=Metric.TEST_MCC, help=f"test metric to compare (default: {Metric.TEST_MCC})")
    p.add_argument("--alpha", default="0.05", help="significance level (default: 0.05)")
    p.add_argument("--rope", default="0.01", help="half-width of the region of practical equivalence (default: 0.01)")
    p.add_argument("--seed", default="0", help="seed of the bootstrap and the posterior sampling (default: 0)")
    p.add_argument("--out", default="", help="report folder (default: reports/<experiment>)")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-log", action="store_true", help="write the folder only; do not log an MLflow run")
    return p


def check_tracking_uri_exists(uri: str) -> None:
    """Refuse a sqlite tracking database that does not exist: MLflow would create an empty one, left behind."""
    from sqlalchemy.engine import make_url

    from harness import tracking

    from .collect import AnalysisError

    if not uri.startswith("sqlite:"):
        return
    path = make_url(uri).database
    if path and path != ":memory:" and not Path(path).is_file():
        raise AnalysisError(f"no MLflow tracking database at {tracking.redact(uri)}: {Path(path).resolve()} does not "
                            "exist. Pass the harness's tracking URI (--tracking-uri or MLFLOW_TRACKING_URI) or run "
                            "the harness first")


def finite_number(value: str, name: str, low: float, high: float | None = None) -> float:
    """A float option in [low, high): NaN passes every comparison and inf any open bound, so refuse them first."""
    from harness.errors import ParameterError
    from harness.parameters import number

    try:
        parsed = float(value)
    except ValueError:
        parsed = 0.0  # not a number at all: `number` names the option and the value
    if not math.isfinite(parsed):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    return number(value, name, float, low, high)


def run(args: argparse.Namespace) -> Path:
    import mlflow
    import yaml

    from harness import tracking
    from harness.errors import StudyError
    from harness.parameters import number
    from harness.schema import Artifact, Stage, Tag
    from harness.studies import load_study, parse_study

    from .collect import collect
    from .contrasts import default_contrasts, exploratory_contrasts, user_contrasts
    from .report import Settings, build_report, check_report_folder

    settings = Settings(alpha=finite_number(args.alpha, "--alpha", 1e-9, 1.0),
                        rope=finite_number(args.rope, "--rope", 0.0), seed=number(args.seed, "--seed", int, 0))
    out = Path(args.out or Path("reports") / args.experiment)
    check_report_folder(out)  # before minutes of bootstrap, and before an MLflow run is started
    uri = args.tracking_uri or tracking.tracking_uri()
    check_tracking_uri_exists(uri)
    tracking.check_tracking_store(uri)
    mlflow.set_tracking_uri(uri)
    with tracking.redacted_errors(uri):
        results = collect(args.experiment, args.metric, args.study or None)
    contrasts, notes = default_contrasts(results.arms), []
    try:
        if results.study_file:
            where, text = results.study_file
            spec = parse_study(yaml.safe_load(text), where)
        else:
            spec = load_study(results.studies[0])
        contrasts += user_contrasts(spec.contrasts)
        results.family_overrides = dict(spec.families)
        if spec.families:
            notes.append(f"task families from {spec.path}: "
                         + ", ".join(f"{task} → {family}" for task, family in spec.families.items()))
        if spec.contrasts:
            notes.append(f"{len(spec.contrasts)} contrast(s) declared in {spec.path}")
    except StudyError as err:
        notes.append(f"no study file ({err}): only the default contrasts")
    exploratory = exploratory_contrasts(results.cells["arm"], contrasts)  # the pairs no named contrast asks about
    log.info("analysing %d final runs of %d arms on %d tasks (%d named contrast(s), %d exploratory pair(s))",
             len(results.runs), results.runs["arm"].nunique(), results.runs["task"].nunique(), len(contrasts),
             len(exploratory))
    contrasts += exploratory
    if args.no_log:
        return build_report(results, contrasts, out, settings, notes)
    tracking.setup(args.experiment, uri)
    tags = {Tag.STAGE: Stage.ANALYSIS, Tag.ANALYSED_EXPERIMENT: args.experiment, Tag.STUDY: results.studies[0],
            Tag.GIT_COMMIT: tracking.git_commit()}
    with tracking.run(f"analysis | {results.metric}", tags):
        tracking.log_params({"metric": results.metric, "alpha": settings.alpha, "rope": settings.rope,
                             "seed": settings.seed, "study": results.studies[0], "n_final_runs": len(results.runs),
                             "contrasts": [c.label for c in contrasts]})
        report = build_report(results, contrasts, out, settings, notes)
        mlflow.log_artifacts(str(out), Artifact.REPORT)
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from harness.errors import print_error

    try:
        report = run(args)
    except Exception as err:
        return print_error(err)
    print(f"report: {report}")
    return 0
