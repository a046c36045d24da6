"""`export.serve`'s app, replicated on Ray Serve.

    serve run export.ray_serve:build_app model=sentiment.onnx
    serve run export.ray_serve:build_app models=sentiment.onnx,tickets.onnx num_replicas=4

Ray's own CLI and its app-builder convention: ``key=value`` arguments, given
to `build_app` as a dict. Each replica builds its own `export.serve.create_app`
(KServe v2 and v1, micro-batching, metrics, the page) in its own process: the
app holds onnxruntime sessions, which cannot be pickled. Ray Serve's proxy
spreads requests over the replicas and replaces one that dies. The model files
must be readable at the same path on every node.

Arguments (all optional but the model):

- ``model`` or ``models``: one ``.onnx`` file, or several joined by commas;
- ``num_replicas`` (1): copies of the app, one CPU each;
- ``max_ongoing_requests`` (64): requests a replica takes at once (Serve's
  default of 5 leaves the micro-batcher little to batch);
- ``max_batch``, ``max_delay_ms``, ``threads``, ``max_body``: as the
  `python -m export.serve` options of those names (``threads`` defaults to 1
  here: a replica holds one CPU).
"""

from __future__ import annotations

from export.engines.ray_data import RAY_EXTRA
from export.serve import Settings, create_app

__all__ = ["build_app", "settings_from"]

#: The `Settings` a deployment takes, and their types: the batching knobs. Not the
#: repository or gRPC ones: Ray Serve has its own model handles and gRPC proxy.
_NUMBERS = {"max_batch": int, "max_delay_ms": float, "threads": int, "max_body": int}
#: Requests a replica takes at once. Serve's default, 5, starves the micro-batcher: at 64
#: clients on 2 cores it gave 27 requests/s, 64 gave 218.
DEFAULT_ONGOING = 64


def settings_from(args: dict[str, str]) -> tuple[Settings, int, int]:
    """The server's `Settings`, the replicas and their ``max_ongoing_requests``, from ``serve run``'s arguments.

    Raises:
        ValueError: no model, an unknown key, or a value that is not a number
            (one line naming it).
    """
    args = dict(args)
    models = [m for m in (args.pop("models", "") + "," + args.pop("model", "")).split(",") if m]
    if not models:
        raise ValueError("no model: give model=FILE.onnx (or models=a.onnx,b.onnx)")
    replicas = args.pop("num_replicas", "1")
    ongoing = args.pop("max_ongoing_requests", str(DEFAULT_ONGOING))
    known = set(_NUMBERS)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(
            f"unknown argument {unknown[0]!r}; expected model(s), num_replicas, max_ongoing_requests, "
            f"{', '.join(sorted(known))}"
        )
    values = {}
    given = {"num_replicas": replicas, "max_ongoing_requests": ongoing, "threads": args.pop("threads", "1"), **args}
    for key, text in given.items():
        try:
            values[key] = _NUMBERS.get(key, int)(text)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {text!r}") from None
    replicas, ongoing = values.pop("num_replicas"), values.pop("max_ongoing_requests")
    if replicas < 1 or ongoing < 1:
        raise ValueError(f"num_replicas and max_ongoing_requests must be >= 1, got {replicas} and {ongoing}")
    return Settings(models=tuple(models), **values), replicas, ongoing


def build_app(args: dict[str, str]):
    """The Ray Serve application of `export.serve`'s app; ``serve run`` calls it with its arguments.

    The models are opened here once, on the driver, so a bad file fails
    ``serve run`` at once (one line), not in every replica.
    """
    try:
        from ray import serve
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"Ray Serve is not installed: {RAY_EXTRA}") from None
    settings, replicas, ongoing = settings_from(args)
    create_app(settings)  # fail here, once, on a bad model
    def build_replica_app():
        # A builder, not the app: Serve pickles it to each replica, which builds its own.
        # A function (Serve takes anything else callable, functools.partial too, for the app).
        return create_app(settings)

    app = serve.ingress(build_replica_app)

    @serve.deployment(
        name="keras_attn", num_replicas=replicas, ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=ongoing,
    )
    @app
    class Server:
        """One replica: `export.serve.create_app` of the settings."""

    return Server.bind()
