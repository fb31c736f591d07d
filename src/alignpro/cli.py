"""The `alignpro` command: `alignpro serve` puts a trained prompter in front of a frozen model as an
OpenAI-compatible server (alignpro.serve)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

# flag -> where it goes in the settings (a key, or a key in a section)
SERVE_FLAGS = {
    "prompter": ("prompter",),
    "prompter_base_url": ("prompter", "api", "base_url"),
    "prompter_model": ("prompter", "api", "model"),
    "prompter_api_key_env": ("prompter", "api", "api_key_env"),
    "frozen_path": ("frozen", "path"),
    "frozen_base_url": ("frozen", "api", "base_url"),
    "frozen_model": ("frozen", "api", "model"),
    "frozen_api_key_env": ("frozen", "api", "api_key_env"),
    "rewrite_backend": ("rewrite", "backend"),
    "generation_backend": ("generation", "backend"),
    "served_model": ("served_model",),
    "max_concurrency": ("max_concurrency",),
    "host": ("host",),
    "port": ("port",),
}

MODEL_FLAGS = {
    "prompter": "--prompter (its directory) or --prompter-base-url and --prompter-model (an OpenAI-compatible server)",
    "frozen": "--frozen-base-url and --frozen-model (an OpenAI-compatible server) or --frozen-path (its weights)",
}


def serve_settings(args: argparse.Namespace):
    """The settings of the YAML file `--config` (ServeSettings' keys), flags given on top."""
    import yaml

    from alignpro.serve import ServeSettings

    settings = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    for flag, (*sections, key) in SERVE_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        section = settings
        for name in sections:
            if isinstance(section.get(name), str):  # a model entry given as its directory
                section[name] = {"path": section[name]}
            section = section.setdefault(name, {})
        section[key] = value
    for model, flags in MODEL_FLAGS.items():
        if model not in settings:
            raise SystemExit(f"alignpro serve: give the {model} model: {flags}, or {model}: in --config")
    try:
        return ServeSettings.from_config(settings)
    except ValueError as error:
        raise SystemExit(f"alignpro serve: {error}") from None


def parser() -> argparse.ArgumentParser:
    from alignpro.generation import BACKENDS

    parser = argparse.ArgumentParser(prog="alignpro")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="an OpenAI-compatible server: the prompter rewrites, the frozen model answers")
    serve.add_argument("--config", help="a YAML file of the settings (alignpro.serve.ServeSettings: prompter, frozen, rewrite, generation, ...)")
    serve.add_argument("--prompter", help="the trained prompter's directory, e.g. results/train/<dataset>/<frozen>/<prompter>/ppo/model")
    serve.add_argument("--prompter-base-url", help="or the OpenAI-compatible endpoint serving the trained prompter")
    serve.add_argument("--prompter-model", help="that endpoint's name for the prompter")
    serve.add_argument("--prompter-api-key-env", help="the environment variable holding that endpoint's key (OPENAI_API_KEY)")
    serve.add_argument("--rewrite-backend", choices=BACKENDS, help="what runs a prompter directory (vllm; transformers on a CPU)")
    serve.add_argument("--frozen-base-url", help="the frozen model's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8001/v1")
    serve.add_argument("--frozen-model", help="the endpoint's name for the frozen model")
    serve.add_argument("--frozen-api-key-env", help="the environment variable holding the endpoint's key (OPENAI_API_KEY)")
    serve.add_argument("--frozen-path", help="or the frozen model's weights (a directory or hub id), run in this process")
    serve.add_argument("--generation-backend", choices=BACKENDS, help="what runs the frozen model's weights (vllm; transformers on a CPU)")
    serve.add_argument("--served-model", help="the model name clients send (default: the frozen model's)")
    serve.add_argument("--max-concurrency", type=int, help="requests handled at once; the rest wait (32)")
    serve.add_argument("--host", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (8000)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "serve":
        import uvicorn

        from alignpro.serve import build_app

        settings = serve_settings(args)
        uvicorn.run(build_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
