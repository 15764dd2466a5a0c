"""The reviewed allow-list: every class or factory a forecaster spec may name.

An explicit set, never "everything in sktime's registry": some sktime estimators
evaluate strings (``FhPlexForecaster.fh_params`` goes through ``eval``), call
``craft()`` on a string, or load code or weights from a path. Each entry below was
reviewed for that; `audit_class` repeats the review mechanically and a test runs it on
every entry, so a library upgrade that adds such a parameter fails the suite.

The checks (`audit_class`), each a finding unless listed in `REVIEWED` with a reason:
1. a constructor parameter whose name says it carries code, a module, a file, a URL or
   weights (`CODE_CARRYING_PARAM`);
2. the source of the class and of every library class it inherits from (shared base
   classes in `REVIEWED_BASES` excepted; our own classes, ``service.*``, included) calls
   ``eval``/``exec``, imports by name, unpickles, opens files, downloads, or runs ``craft``
   (`CODE_CALLS`).
At build time (`service.forecasting.specs`) a parameter matching check 1 is refused
for every class, including the ``**kwargs`` of the boosters.
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
import warnings
from collections.abc import Callable
from typing import Any

# name -> "module:attribute", by family (public import paths)
STATISTICAL = {
    "NaiveForecaster": "sktime.forecasting.naive:NaiveForecaster",
    "ThetaForecaster": "sktime.forecasting.theta:ThetaForecaster",
    "ExponentialSmoothing": "sktime.forecasting.exp_smoothing:ExponentialSmoothing",
    "AutoETS": "sktime.forecasting.ets:AutoETS",
    "SARIMAX": "sktime.forecasting.sarimax:SARIMAX",
    "VAR": "sktime.forecasting.var:VAR",
    "VARMAX": "sktime.forecasting.varmax:VARMAX",
    "VECM": "sktime.forecasting.vecm:VECM",
    "UnobservedComponents": "sktime.forecasting.structural:UnobservedComponents",
    "DynamicFactor": "sktime.forecasting.dynamic_factor:DynamicFactor",
    "TrendForecaster": "sktime.forecasting.trend:TrendForecaster",
    "PolynomialTrendForecaster": "sktime.forecasting.trend:PolynomialTrendForecaster",
    "STLForecaster": "sktime.forecasting.trend:STLForecaster",
    "Croston": "sktime.forecasting.croston:Croston",
    "StatsForecastAutoARIMA": "sktime.forecasting.statsforecast:StatsForecastAutoARIMA",
    "StatsForecastAutoETS": "sktime.forecasting.statsforecast:StatsForecastAutoETS",
    "StatsForecastAutoTheta": "sktime.forecasting.statsforecast:StatsForecastAutoTheta",
    "StatsForecastAutoCES": "sktime.forecasting.statsforecast:StatsForecastAutoCES",
    "StatsForecastMSTL": "sktime.forecasting.statsforecast:StatsForecastMSTL",
    # ours: a per-series median/selection of the four StatsForecast adapters above, built
    # only from allow-listed sktime classes (tests/forecasting/test_auto_forecaster.py)
    "AutoStatistical": "service.forecasting.auto:AutoStatistical",
}
REDUCTION = {
    "make_reduction": "sktime.forecasting.compose:make_reduction",
    "RecursiveTabularRegressionForecaster": "sktime.forecasting.compose:RecursiveTabularRegressionForecaster",
    "DirectTabularRegressionForecaster": "sktime.forecasting.compose:DirectTabularRegressionForecaster",
    "DirRecTabularRegressionForecaster": "sktime.forecasting.compose:DirRecTabularRegressionForecaster",
    "MultioutputTabularRegressionForecaster": "sktime.forecasting.compose:MultioutputTabularRegressionForecaster",
    "DirectReductionForecaster": "sktime.forecasting.compose:DirectReductionForecaster",
    "RecursiveReductionForecaster": "sktime.forecasting.compose:RecursiveReductionForecaster",
    "YfromX": "sktime.forecasting.compose:YfromX",
}
COMPOSITION = {
    "TransformedTargetForecaster": "sktime.forecasting.compose:TransformedTargetForecaster",
    "ForecastingPipeline": "sktime.forecasting.compose:ForecastingPipeline",
    "ForecastX": "sktime.forecasting.compose:ForecastX",
    "EnsembleForecaster": "sktime.forecasting.compose:EnsembleForecaster",
    "AutoEnsembleForecaster": "sktime.forecasting.compose:AutoEnsembleForecaster",
    "MultiplexForecaster": "sktime.forecasting.compose:MultiplexForecaster",
    "ColumnEnsembleForecaster": "sktime.forecasting.compose:ColumnEnsembleForecaster",
    "StackingForecaster": "sktime.forecasting.compose:StackingForecaster",
    "BaggingForecaster": "sktime.forecasting.compose:BaggingForecaster",
    "ForecastByLevel": "sktime.forecasting.compose:ForecastByLevel",
    "ConformalIntervals": "sktime.forecasting.conformal:ConformalIntervals",
    # ours: conformal intervals for a global (whole-panel) forecaster, from whole-panel refits
    # on a few expanding windows, composed of sktime's fit/predict (intervals: conformal on a panel)
    "GlobalConformalIntervals": "service.forecasting.conformal:GlobalConformalIntervals",
    "NaiveVariance": "sktime.forecasting.naive:NaiveVariance",
    "UpdateEvery": "sktime.forecasting.stream:UpdateEvery",
    "UpdateRefitsEvery": "sktime.forecasting.stream:UpdateRefitsEvery",
    "DontUpdate": "sktime.forecasting.stream:DontUpdate",
}
MODEL_SELECTION = {
    "ForecastingGridSearchCV": "sktime.forecasting.model_selection:ForecastingGridSearchCV",
    "ForecastingRandomizedSearchCV": "sktime.forecasting.model_selection:ForecastingRandomizedSearchCV",
    "ExpandingWindowSplitter": "sktime.split:ExpandingWindowSplitter",
    "SlidingWindowSplitter": "sktime.split:SlidingWindowSplitter",
    "SingleWindowSplitter": "sktime.split:SingleWindowSplitter",
    "ExpandingGreedySplitter": "sktime.split:ExpandingGreedySplitter",
    "MeanAbsoluteError": "sktime.performance_metrics.forecasting:MeanAbsoluteError",
    "MeanSquaredError": "sktime.performance_metrics.forecasting:MeanSquaredError",
    "MeanAbsolutePercentageError": "sktime.performance_metrics.forecasting:MeanAbsolutePercentageError",
    "MeanAbsoluteScaledError": "sktime.performance_metrics.forecasting:MeanAbsoluteScaledError",
    "MeanSquaredScaledError": "sktime.performance_metrics.forecasting:MeanSquaredScaledError",
    "MedianAbsoluteError": "sktime.performance_metrics.forecasting:MedianAbsoluteError",
}
RECONCILIATION = {
    "ReconcilerForecaster": "sktime.forecasting.reconcile:ReconcilerForecaster",
    "Reconciler": "sktime.transformations.hierarchical.reconcile:Reconciler",
    "Aggregator": "sktime.transformations.hierarchical.aggregate:Aggregator",
}
TRANSFORMERS = {
    "Deseasonalizer": "sktime.transformations.detrend:Deseasonalizer",
    "ConditionalDeseasonalizer": "sktime.transformations.detrend:ConditionalDeseasonalizer",
    "STLTransformer": "sktime.transformations.detrend:STLTransformer",
    "Detrender": "sktime.transformations.detrend:Detrender",
    "Differencer": "sktime.transformations.difference:Differencer",
    "BoxCoxTransformer": "sktime.transformations.boxcox:BoxCoxTransformer",
    "LogTransformer": "sktime.transformations.boxcox:LogTransformer",
    "ExponentTransformer": "sktime.transformations.exponent:ExponentTransformer",
    "SqrtTransformer": "sktime.transformations.exponent:SqrtTransformer",
    "WindowSummarizer": "sktime.transformations.summarize:WindowSummarizer",
    "Lag": "sktime.transformations.lag:Lag",
    "Imputer": "sktime.transformations.impute:Imputer",
    "TabularToSeriesAdaptor": "sktime.transformations.adapt:TabularToSeriesAdaptor",
    "DateTimeFeatures": "sktime.transformations.date:DateTimeFeatures",
    "FourierFeatures": "sktime.transformations.fourier:FourierFeatures",
    "ColumnSelect": "sktime.transformations.subset:ColumnSelect",
    "StandardScaler": "sklearn.preprocessing:StandardScaler",
    "MinMaxScaler": "sklearn.preprocessing:MinMaxScaler",
    "RobustScaler": "sklearn.preprocessing:RobustScaler",
}
REGRESSORS = {
    **{
        name: f"sklearn.linear_model:{name}"
        for name in (
            "LinearRegression",
            "Ridge",
            "RidgeCV",
            "Lasso",
            "LassoCV",
            "ElasticNet",
            "ElasticNetCV",
            "BayesianRidge",
            "HuberRegressor",
            "QuantileRegressor",
            "PoissonRegressor",
            "TweedieRegressor",
            "SGDRegressor",
        )
    },
    **{
        name: f"sklearn.ensemble:{name}"
        for name in (
            "RandomForestRegressor",
            "ExtraTreesRegressor",
            "GradientBoostingRegressor",
            "HistGradientBoostingRegressor",
            "AdaBoostRegressor",
            "BaggingRegressor",
        )
    },
    "DecisionTreeRegressor": "sklearn.tree:DecisionTreeRegressor",
    "ExtraTreeRegressor": "sklearn.tree:ExtraTreeRegressor",
    "KNeighborsRegressor": "sklearn.neighbors:KNeighborsRegressor",
    "SVR": "sklearn.svm:SVR",
    "LinearSVR": "sklearn.svm:LinearSVR",
    "KernelRidge": "sklearn.kernel_ridge:KernelRidge",
    "MLPRegressor": "sklearn.neural_network:MLPRegressor",
    "XGBRegressor": "xgboost:XGBRegressor",
    "LGBMRegressor": "lightgbm:LGBMRegressor",
}
FAMILIES: dict[str, dict[str, str]] = {
    "statistical": STATISTICAL,
    "reduction": REDUCTION,
    "composition": COMPOSITION,
    "model selection": MODEL_SELECTION,
    "reconciliation": RECONCILIATION,
    "transformers": TRANSFORMERS,
    "regressors": REGRESSORS,
}
ALLOWED: dict[str, str] = {name: path for family in FAMILIES.values() for name, path in family.items()}

# check 1: parameter names that can carry code, modules, files, URLs or weights
CODE_CARRYING_PARAM = re.compile(
    r"(^|_)(eval|exec|code|script|source|import|module|path|paths|file|filename|dir|directory|url|uri|"
    r"weights|checkpoint|pretrained|repo|hub|token|craft|spec|input_model|output_model|callback|callbacks)($|_)"
)
# check 2: calls in library source that evaluate, import by name, unpickle, open or download
CODE_CALLS = re.compile(
    r"\b(eval|exec)\s*\(|__import__|import_module|importlib|pickle\.loads?|joblib\.load|torch\.load|"
    r"load_from_checkpoint|from_pretrained|\bcraft\s*\(|\bopen\s*\(|urlopen|subprocess|os\.system"
)
# shared base classes, reviewed once: nothing in them is reached from a constructor parameter
REVIEWED_BASES = {
    # load_from_path / load_from_serial (pickle, open) are classmethods a spec cannot call
    "sktime.base._base.BaseObject",
    # imports the estimator's own module by name to build a documentation link in HTML reprs
    "sktime.utils._estimator_html_repr._HTMLDocumentationLinkMixin",
}
# (class, parameter or call) -> ("allow" | "refuse", why). "allow": reviewed, a spec may set
# it; "refuse": a spec setting it is refused at build time. Unlisted findings fail the audit.
REVIEWED: dict[tuple[str, str], tuple[str, str]] = {
    **{
        (cls, "callback"): ("refuse", "a callable for statsmodels' optimiser; JSON cannot carry one")
        for cls in ("AutoETS", "SARIMAX", "VARMAX", "UnobservedComponents", "DynamicFactor")
    },
    ("EnsembleForecaster", "weights"): ("allow", "a list of floats, one per forecaster"),
    ("KNeighborsRegressor", "weights"): ("allow", "'uniform' or 'distance' (a callable cannot come from JSON)"),
}


def audit_class(name: str, target: Any) -> list[str]:
    """Findings of the two checks for one allow-listed class or factory (empty: clean)."""
    findings = []
    for param in inspect.signature(target).parameters:
        if CODE_CARRYING_PARAM.search(param) and (name, param) not in REVIEWED:
            findings.append(f"{name}: parameter '{param}' may carry code, a module, a file or weights")
    classes = inspect.getmro(target) if inspect.isclass(target) else (target,)
    for cls in classes:
        module = getattr(cls, "__module__", "") or ""
        if not module.startswith(("sktime", "sklearn", "xgboost", "lightgbm", "service")):
            continue
        if f"{module}.{cls.__qualname__}" in REVIEWED_BASES:
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        for call in sorted({m.group(0) for m in CODE_CALLS.finditer(source)}):
            if (name, call) not in REVIEWED:
                findings.append(f"{name}: {module}.{cls.__qualname__} calls {call!r}")
    return findings


def refused_param(class_name: str, param: str) -> bool:
    """A parameter of the code-carrying kind (check 1) not reviewed as safe: refused at build time."""
    if not CODE_CARRYING_PARAM.search(param):
        return False
    verdict, _ = REVIEWED.get((class_name, param), ("refuse", ""))
    return verdict != "allow"


_RESOLVED: dict[str, Callable[..., Any]] = {}
_LOCK = threading.Lock()


def allowed_classes() -> dict[str, Callable[..., Any]]:
    """Every allow-listed class or factory, imported once per process under a lock (call it
    before threads start: importing sklearn/sktime modules from two threads at once fails
    with 'partially initialized module'). Entries whose optional package is missing are
    left out."""
    if not _RESOLVED:
        with _LOCK:
            if not _RESOLVED:
                found: dict[str, Callable[..., Any]] = {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for name, path in ALLOWED.items():
                        module, attribute = path.split(":")
                        try:
                            found[name] = getattr(importlib.import_module(module), attribute)
                        except ImportError:
                            continue
                _RESOLVED.update(found)
    return _RESOLVED
