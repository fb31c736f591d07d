"""The `alignpro` command: `alignpro serve` puts a trained prompter in front of a frozen model as an
OpenAI-compatible server (alignpro.serve)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

# flag -> (the settings key it sets, its section or None)
SERVE_FLAGS = {
    "prompter": ("prompter", None),
    "frozen_base_url": ("base_url", "frozen"),
    "frozen_model": ("model", "frozen"),
    "frozen_api_key_env": ("api_key_env", "frozen"),
    "rewrite_backend": ("backend", "rewrite"),
    "served_model": ("served_model", None),
    "max_concurrency": ("max_concurrency", None),
    "host": ("host", None),
    "port": ("port", None),
}


def serve_settings(args: argparse.Namespace):
    """The settings of the YAML file `--config` (ServeSettings' keys), flags given on top."""
    import yaml

    from alignpro.serve import ServeSettings

    section = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    section.setdefault("frozen", {})
    section.setdefault("rewrite", {})
    for flag, (key, part) in SERVE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            (section[part] if part else section)[key] = value
    if "prompter" not in section:
        raise SystemExit("alignpro serve: give the trained prompter's directory (--prompter, or prompter: in --config)")
    try:
        return ServeSettings.from_config(section)
    except ValueError as error:
        raise SystemExit(f"alignpro serve: {error}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="alignpro")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="an OpenAI-compatible server: the prompter rewrites, the frozen model answers")
    serve.add_argument("--config", help="a YAML file of the settings (alignpro.serve.ServeSettings: prompter, frozen, rewrite, ...)")
    serve.add_argument("--prompter", help="the trained prompter's directory, e.g. results/train/<dataset>/<frozen>/<prompter>/ppo/model")
    serve.add_argument("--frozen-base-url", help="the frozen model's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8001/v1")
    serve.add_argument("--frozen-model", help="the endpoint's name for the frozen model")
    serve.add_argument("--frozen-api-key-env", help="the environment variable holding the endpoint's key (OPENAI_API_KEY)")
    serve.add_argument("--rewrite-backend", choices=("vllm", "transformers"), help="what runs the prompter (vllm; transformers on a CPU)")
    serve.add_argument("--served-model", help="the model name clients send (default: the frozen model's)")
    serve.add_argument("--max-concurrency", type=int, help="requests handled at once; the rest wait (32)")
    serve.add_argument("--host", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "serve":
        import uvicorn

        from alignpro.serve import build_app

        settings = serve_settings(args)
        uvicorn.run(build_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
