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
- ``max_batch``, ``max_delay_ms``, ``threads``, ``max_body``: as the
  `python -m export.serve` options of those names (``threads`` defaults to 1
  here: a replica holds one CPU).
"""

from __future__ import annotations

from dataclasses import fields

from export.serve import Settings, create_app

__all__ = ["SERVE_EXTRA", "build_app", "settings_from"]

#: What to install for Ray Serve.
SERVE_EXTRA = 'pip install "keras-attn[ray-serve]"'
_NUMBERS = {"max_batch": int, "max_delay_ms": float, "threads": int, "max_body": int}


def settings_from(args: dict[str, str]) -> tuple[Settings, int]:
    """The server's `Settings` and the number of replicas, from ``serve run``'s ``key=value`` arguments.

    Raises:
        ValueError: no model, an unknown key, or a value that is not a number
            (one line naming it).
    """
    args = dict(args)
    models = [m for m in (args.pop("models", "") + "," + args.pop("model", "")).split(",") if m]
    if not models:
        raise ValueError("no model: give model=FILE.onnx (or models=a.onnx,b.onnx)")
    replicas = args.pop("num_replicas", "1")
    known = {f.name for f in fields(Settings)} - {"models"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}; expected model(s), num_replicas, {', '.join(sorted(known))}")
    values = {}
    for key, text in {"num_replicas": replicas, "threads": args.pop("threads", "1"), **args}.items():
        try:
            values[key] = _NUMBERS.get(key, int)(text)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {text!r}") from None
    replicas = values.pop("num_replicas")
    if replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {replicas}")
    return Settings(models=tuple(models), **values), replicas


def build_app(args: dict[str, str]):
    """The Ray Serve application of `export.serve`'s app; ``serve run`` calls it with its arguments.

    The models are opened here once, on the driver, so a bad file fails
    ``serve run`` at once (one line), not in every replica.
    """
    try:
        from ray import serve
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"Ray Serve is not installed: {SERVE_EXTRA}") from None
    settings, replicas = settings_from(args)
    create_app(settings)  # fail here, once, on a bad model
    def build_replica_app():
        # A builder, not the app: Serve pickles it to each replica, which builds its own.
        # A function (Serve takes anything else callable, functools.partial too, for the app).
        return create_app(settings)

    app = serve.ingress(build_replica_app)

    @serve.deployment(name="keras_attn", num_replicas=replicas, ray_actor_options={"num_cpus": 1})
    @app
    class Server:
        """One replica: `export.serve.create_app` of the settings."""

    return Server.bind()
