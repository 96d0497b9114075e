"""``torchkd serve-teacher``: run a recipe's teacher in this process behind HTTP, answering
token batches with what its teacher cache would store (:mod:`torchkd.lm.server`), for runs
whose recipe says ``teacher: {server: URL}``."""

from __future__ import annotations

import argparse

from torchkd.cli.base import (
    EXIT_OK,
    Command,
    UsageError,
    add_overrides_argument,
    add_recipe_argument,
    load_recipe,
    non_negative_int,
    register,
)

MAX_PORT = 65535


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_overrides_argument(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "interface, with no authentication)",
    )
    parser.add_argument(
        "--port",
        type=non_negative_int,
        default=8000,
        help="the port to listen on (default 8000; 0: a free one, printed)",
    )


def _run(args: argparse.Namespace) -> int:
    from torchkd.config import build_model, cache_teacher, cache_temperature, check_teacher_weights
    from torchkd.config.errors import blame
    from torchkd.config.schema import CACHE_SIZE_DEFAULTS
    from torchkd.config.teacher_cache import check_cache_terms, recipe_teacher_source
    from torchkd.lm.server import TeacherServer, bind, server_url
    from torchkd.train import resolve_device
    from torchkd.train.rng import seed_everything

    if args.port > MAX_PORT:
        raise UsageError(f"--port must be at most {MAX_PORT}, got {args.port}")
    recipe = load_recipe(args.recipe, args.overrides)
    cache = recipe.data.teacher_cache
    kind = cache.kind if cache else "topk"
    settings = {
        "kind": kind,
        "k": cache.k if cache else CACHE_SIZE_DEFAULTS["k"],
        "samples": cache.samples if cache else None,
        "seed": cache.seed if cache else 0,
    }
    temperature = cache_temperature(recipe)
    check_cache_terms(recipe)
    teacher_config, teacher_path = cache_teacher(recipe)
    seed_everything(recipe.train.seed)
    if teacher_config.untrained:  # the random weights cache-teacher draws: after the student's
        build_model(recipe.student, "student")
    check_teacher_weights(teacher_config, teacher_path)
    device = resolve_device(recipe.train.device)
    teacher = build_model(teacher_config, teacher_path).to(device)
    with blame("data.teacher_cache"):
        server = TeacherServer(
            teacher,
            **settings,
            temperature=temperature,
            teacher_source=recipe_teacher_source(teacher_config),
            device=device,
        )
    try:
        httpd = bind(server, args.host, args.port)
    except OSError as error:
        raise UsageError(
            f"--host {args.host} --port {args.port}: cannot listen ({error})"
        ) from None
    url = server_url(httpd)
    sizes = f"k = {settings['k']}" if kind == "topk" else f"{settings['samples']} samples"
    if kind == "sampled":
        head = f", exact top-{settings['k']}" if settings["k"] else ""
        sizes += f"{head}, seed {settings['seed']}"
    print(f"serving at {url}", flush=True)
    print(
        f"  the teacher {teacher_path} of {args.recipe} ({kind}, {sizes}, temperature "
        f"{temperature:g}, on {device})\n"
        f"  teacher fingerprint {server.settings['teacher_fingerprint']}\n"
        f"  train against it with the recipe key teacher: {{server: {url}}}; Ctrl-C stops it",
        flush=True,
    )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("torchkd serve-teacher: stopped")
    finally:
        httpd.server_close()
    return EXIT_OK


register(
    Command(
        name="serve-teacher",
        summary="serve the recipe teacher's top-k (or sampled) outputs over HTTP for training",
        description="Run the recipe's teacher in this process and answer, over HTTP on HOST:PORT "
        "(127.0.0.1 by default), batches of token ids with exactly what `torchkd cache-teacher` "
        "would store for them: per token its top-k token ids, log-probabilities and tail mass "
        "(or, with data.teacher_cache.kind=sampled, the ids and counts of tokens sampled from it "
        "and its entropy) at the temperature of the terms that read it (teacher: cache), as "
        "safetensors. A run whose recipe says teacher: {server: URL}, with the same terms, then "
        "trains against it as against that cache, its teacher's forward pass on this process's "
        "device instead of the training one; the client checks the server's fingerprint and "
        "settings first and in every answer (e.g. torchkd train RECIPE 'teacher={server: "
        "http://127.0.0.1:8000}' data.teacher_cache=null). Prints the URL (with --port 0, the "
        "port it got). "
        "No authentication: keep it on 127.0.0.1 or a private network.",
        examples="torchkd serve-teacher runs/demo_lm/cache_teacher/config.yaml --port 8000\n"
        "torchkd serve-teacher RECIPE --port 0 data.teacher_cache.kind=sampled train.device=cuda",
        add_arguments=_arguments,
        run=_run,
    )
)
