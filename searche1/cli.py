"""The `searche1` command line (typer). Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from searche1.errors import SearchE1Error

app = typer.Typer(help="searche1: train and evaluate search agents with the Search-E1 recipe.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Data utilities: synthetic worlds, file checks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Policy models: fetch the embedded model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console(stderr=True, soft_wrap=True)  # no line breaks inside paths: a message stays copyable


def _fail(e: Exception) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(e))}")  # a message's [brackets] are text, not markup
    raise typer.Exit(2)


def _options(cls, values: dict):
    """``from_dict(cls, values)`` for a command whose options are ``cls``'s fields: an invalid value's error names
    the option (``--batch-size: must be >= 1``), not the config field (``batch_size: ...``)."""
    from searche1.config import ConfigError, from_dict

    try:
        return from_dict(cls, values)
    except ConfigError as e:
        name, sep, rest = str(e).partition(":")
        if sep and name in values:
            raise ConfigError(f"--{name.replace('_', '-')}:{rest}") from None
        raise


def _overrides(items: list[str]) -> dict:
    """``--set key=value`` options as a dict (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SearchE1Error(f"--set {item!r}: expected key=value, e.g. --set grpo.steps=10")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())
            raise SearchE1Error(f"--set {item!r}: the value is not YAML ({why}) (fix: quote it as a YAML string, "
                                f"e.g. --set '{key.strip()}=\"{value}\"')") from None
    return out


def _check_out_file(out: Optional[Path]) -> None:
    """Refuse an --out that is a folder before the work starts (writing the file after it would fail)."""
    if out is not None and out.is_dir():
        raise SearchE1Error(f"--out {out}: is a folder (fix: give a file name, e.g. {out / 'results.json'})")


def _check_listen(host: str, port: int) -> None:
    """Fail before an index loads when ``host:port`` cannot be listened on (a busy port, a foreign address)."""
    import socket

    if not 0 <= port <= 65535:
        raise SearchE1Error(f"--port {port}: must be within 0..65535")
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise SearchE1Error(f"--host {host}: cannot resolve it ({e.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(addr)
        except OSError as e:
            fix = ("pass another --port, or stop what listens there (a searche1 serve still running?)"
                   if e.errno == errno.EADDRINUSE else
                   "--host must be an address of this machine: 127.0.0.1 (loopback) or 0.0.0.0 (every interface)")
            raise SearchE1Error(f"cannot listen on {host}:{port}: {e.strerror} (fix: {fix})") from None


@app.command()
def index(
    corpus: Annotated[Path, typer.Option(help="corpus file: FlashRAG jsonl (id, contents) or id/title/text jsonl")],
    out: Annotated[Path, typer.Option(help="index folder to create (written atomically)")],
    kind: Annotated[str, typer.Option(help="bm25 (CPU default) or dense (sentence-transformers + faiss)")] = "bm25",
    model: Annotated[Optional[str], typer.Option(
        help="dense only: local sentence-transformers folder or pkg:NAME")] = None,
    query_prefix: Annotated[str, typer.Option(help="dense only: prefix for queries (E5: 'query: ')")] = "",
    passage_prefix: Annotated[str, typer.Option(help="dense only: prefix for passages (E5: 'passage: ')")] = "",
    overwrite: Annotated[bool, typer.Option(help="replace an existing index folder (never another kind)")] = False,
) -> None:
    """Build a BM25 or dense index over a corpus."""
    from searche1.retrieval.index import build_index

    if kind not in ("bm25", "dense"):
        _fail(ValueError(f"--kind {kind!r}: valid kinds are bm25, dense"))
    params: dict = {}
    if kind == "dense":
        from searche1.retrieval.dense import DEFAULT_DENSE_MODEL

        params = {"model": model or DEFAULT_DENSE_MODEL, "query_prefix": query_prefix, "passage_prefix": passage_prefix}
    try:
        path = build_index(corpus, out, kind=kind, overwrite=overwrite, **params)
    except (SearchE1Error, FileExistsError, FileNotFoundError, ImportError) as e:
        _fail(e)
    from searche1.retrieval.index import read_index_meta

    meta = read_index_meta(path)
    console.print(f"[green]indexed[/] {meta['num_docs']} passages ({kind}) in {meta['build_seconds']:.1f}s → {path}")


@app.command()
def serve(
    index: Annotated[Optional[Path], typer.Option(help="index folder built by `searche1 index`")] = None,
    upstream: Annotated[Optional[str], typer.Option(
        help="instead of an index: forward to this retrieval server (e.g. one per node in front of a shared one, so "
             "the node's ranks share one cache)")] = None,
    host: Annotated[str, typer.Option(help="bind address (loopback unless you mean to expose it)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_queries: Annotated[int, typer.Option(help="max queries per request")] = 512,
    max_topk: Annotated[int, typer.Option(help="max topk per request (≤ 50)")] = 50,
    cache_size: Annotated[int, typer.Option(help="server-side LRU cache entries (0 = off)")] = 100_000,
    dense_backend: Annotated[str, typer.Option(
        help="dense indexes: faiss (CPU) | torch (bf16 matmul shards over all visible GPUs, exact top-k)")] = "faiss",
    dense_devices: Annotated[str, typer.Option(help="torch backend: auto | cuda | cpu | cuda:0,cuda:1,...")] = "auto",
) -> None:
    """Serve an index (or a caching proxy of another server) over HTTP with the Search-R1 `/retrieve` API."""
    from searche1.retrieval.cache import CachedRetriever
    from searche1.retrieval.server import ServerLimits, create_app
    from searche1.retrieval.server import serve as run_server

    if (index is None) == (upstream is None):
        _fail(ValueError("--index/--upstream: give exactly one (an index folder, or the URL of a server to proxy)"))
    try:
        _check_listen(host, port)
        if index is not None:
            from searche1.retrieval.index import load_retriever, read_index_meta

            meta = read_index_meta(index)
            retriever = load_retriever(index, dense={"backend": dense_backend, "devices": dense_devices})
            info = {"index": str(index), "kind": meta["kind"], "num_docs": meta["num_docs"]}
            what = f"{meta['kind']} index {index} ({meta['num_docs']} passages)"
        else:
            from searche1.retrieval.client import RemoteRetriever

            retriever = RemoteRetriever(upstream)
            info, what = {"upstream": upstream, "kind": "proxy"}, f"a caching proxy of {upstream}"
            try:
                retriever.health()
            except SearchE1Error as e:  # it may come up later: warn, and serve
                console.print(f"[yellow]warning[/]: the upstream does not answer now ({e}); requests fail with "
                              "HTTP 502 until it does")
    except SearchE1Error as e:
        _fail(e)
    if cache_size:
        retriever = CachedRetriever(retriever, maxsize=cache_size)
    try:
        limits = ServerLimits(max_queries=max_queries, max_topk=min(max_topk, 50))
    except ValueError as e:
        _fail(e)
    application = create_app(retriever, limits, info=info)
    console.print(f"serving {what} on http://{host}:{port}")
    run_server(application, host=host, port=port)


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="one or more queries")],
    index: Annotated[Optional[Path], typer.Option(help="index folder (in-process)")] = None,
    url: Annotated[Optional[str], typer.Option(help="retrieval server URL")] = None,
    topk: Annotated[int, typer.Option(help="passages per query")] = 3,
) -> None:
    """Query an index or a server and print the hits."""
    from searche1.config import from_dict
    from searche1.retrieval.config import RetrievalConfig, make_retriever

    try:
        if not 1 <= topk <= 50:
            raise SearchE1Error(f"--topk {topk}: must be within 1..50")
        if (index is None) == (url is None):
            raise SearchE1Error("--index/--url: give exactly one (an index folder, or a retrieval server's URL)")
        cfg = from_dict(RetrievalConfig, {"index": index, "url": url, "cache_size": 0})
        results = make_retriever(cfg).search(list(queries), topk)
    except SearchE1Error as e:
        _fail(e)
    for q, hits in zip(queries, results):
        typer.echo(f"# {q}")
        for i, h in enumerate(hits, 1):
            typer.echo(f"  {i}. [{h.score:.2f}] {h.id} {h.title}: {h.text[:160]}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="output folder (corpus.jsonl, train/, dev/)")],
    seed: Annotated[int, typer.Option(help="world seed: the same seed gives byte-identical files")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing world folder (never another kind)")] = False,
) -> None:
    """Generate a deterministic fictional encyclopedia with single- and multi-hop questions."""
    from searche1.data.synth import generate_world, write_world

    world = generate_world(seed=seed)
    try:
        write_world(world, out, overwrite=overwrite)
    except FileExistsError as e:
        _fail(e)
    n_q = {f"{split}/{k}": len(v) for split, d in (("train", world.train), ("dev", world.dev)) for k, v in d.items()}
    console.print(f"[green]wrote[/] {len(world.passages)} passages and questions {n_q} → {out}")


@data_app.command("check")
def data_check(
    paths: Annotated[list[Path], typer.Argument(help="QA files/folders or corpus files to validate")],
    corpus: Annotated[bool, typer.Option(help="treat the files as corpora")] = False,
) -> None:
    """Validate QA or corpus files and print record counts (errors name file, line and field)."""
    from searche1.data.corpus import load_corpus
    from searche1.data.qa import load_qa_files

    try:
        if corpus:
            for p in paths:
                typer.echo(f"{p}: {len(load_corpus(p))} passages")
        else:
            for name, exs in load_qa_files(paths).items():
                typer.echo(f"{name}: {len(exs)} questions")
    except SearchE1Error as e:
        _fail(e)


@model_app.command("fetch")
def model_fetch(
    name: Annotated[str, typer.Argument(help="embedded model name")] = "smollm2-135m-instruct",
    force: Annotated[bool, typer.Option(help="convert again even if cached")] = False,
) -> None:
    """Convert an embedded GGUF model (shipped in a PyPI package) once into a cached safetensors folder; print its
    path."""
    from searche1.models import fetch_model

    try:
        path = fetch_model(name, force=force)
    except SearchE1Error as e:
        _fail(e)
    typer.echo(str(path))


def _retriever(index: Optional[Path], url: Optional[str]):
    from searche1.config import from_dict
    from searche1.retrieval.config import RetrievalConfig, make_retriever

    cfg = from_dict(RetrievalConfig, {"index": index, "url": url})
    return make_retriever(cfg)


@app.command()
def warmup(
    model: Annotated[str, typer.Option(help="HF model folder or embedded model name")] = "smollm2-135m-instruct",
    index: Annotated[Path, typer.Option(help="index folder for the demonstrations' searches")] = Path("index"),
    data: Annotated[list[Path], typer.Option(help="training QA file(s); repeat the option for several")] = [],
    out: Annotated[Path, typer.Option(help="folder for the warmed-up model (written atomically)")] = Path("warmup"),
    num_examples: Annotated[int, typer.Option(help="demonstrations to train on")] = 240,
    epochs: Annotated[int, typer.Option(help="passes over the demonstrations")] = 1,
    batch_size: Annotated[int, typer.Option(help="demonstrations per optimizer step")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate")] = 5e-5,
    max_hops: Annotated[int, typer.Option(help="searches per demonstration at most")] = 2,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing warm-up folder (never another kind)")] = False,
) -> None:
    """Format warm-up (a bootstrap, not part of Search-E1): fine-tune briefly on protocol demonstrations built from
    the training questions and the retriever (search, read, answer; two hops where the data allows)."""
    from searche1.warmup import WarmupConfig, run_warmup

    if not data:
        _fail(ValueError("--data: give at least one training QA file"))
    try:
        cfg = _options(WarmupConfig, {"num_examples": num_examples, "epochs": epochs, "batch_size": batch_size,
                                      "lr": lr, "max_hops": max_hops, "seed": seed})
        path = run_warmup(model, index, data, out, cfg, overwrite=overwrite)
    except (SearchE1Error, FileExistsError, ValueError) as e:
        _fail(e)
    console.print(f"[green]warmed-up model[/] → {path}")


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="YAML config (see configs/)")],
    out: Annotated[Path, typer.Option(help="run folder: config.json and metrics.jsonl, checkpoints/ (GRPO only) or "
                                           "pipeline.json, phase-NN-KIND/ (a schedule)")],
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its newest complete checkpoint (a "
                                              "pipeline skips its finished phases); a new or empty --out starts one")
                      ] = False,
    set_: Annotated[list[str], typer.Option("--set", help="override a config field: --set grpo.lr=1e-6")] = [],
) -> None:
    """Training: GRPO only, or a Search-E1 schedule of phases (grpo, ofsd, grpo, ofsd); resumable."""
    from searche1.config import load_config
    from searche1.pipeline import PipelineConfig, run_pipeline
    from searche1.train import run_grpo

    try:
        cfg = load_config(PipelineConfig, config, _overrides(set_))
        _check_run_folder(out, cfg, resume)
        _preflight(cfg)
        if cfg.schedule == ["grpo"]:
            path = run_grpo(cfg, out, resume=resume)  # GRPO only: the run folder is the GRPO run itself
        else:
            path = run_pipeline(cfg, out, resume=resume)
    except (SearchE1Error, FileExistsError, ValueError) as e:
        _fail(e)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: the same command with --resume continues from the newest complete "
                      f"checkpoint in {out}")
        raise typer.Exit(130)
    console.print(f"[green]done[/]: {path}")


def _preflight(cfg) -> None:
    """Check what training reads only after the model has loaded (a minute or more for a large policy): the
    retrieval settings, the index or server, and the data files."""
    from searche1.checkpoint import refuse_run_folder
    from searche1.config import ConfigError
    from searche1.data.qa import load_qa, load_qa_files
    from searche1.retrieval.index import read_index_meta

    refuse_run_folder(cfg.model.name_or_path, "model.name_or_path:")
    try:
        cfg.retrieval.validate()
    except ConfigError as e:
        raise ConfigError(f"retrieval.{e}") from None
    if cfg.retrieval.index is not None:
        read_index_meta(cfg.retrieval.index)
    else:
        from searche1.retrieval.client import RemoteRetriever

        r = cfg.retrieval
        RemoteRetriever(r.url, timeout=r.timeout_s, retries=r.retries).search(["searche1: retriever check"], 1)
    if not cfg.data.train:
        raise ConfigError("data.train: give at least one training QA file")
    for f in cfg.data.train:
        load_qa(f)
    if cfg.data.dev and cfg.grpo.eval_every:
        load_qa_files(cfg.data.dev)


def _check_run_folder(out: Path, cfg, resume: bool) -> None:
    """Refuse an --out that holds something other than a run of this config's kind; on --resume, report the config
    fields that changed since the run was started (and keep its previous config.json beside the new one)."""
    import json

    from searche1.config import to_dict

    from searche1.distributed import SHARED_CHECK

    if not out.is_dir() or not any(p.name != SHARED_CHECK for p in out.iterdir()):  # (a check file a killed run
        return  # left behind: searche1.distributed.check_shared_dir)
    try:
        old = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        old = None
    old = old if isinstance(old, dict) and "grpo" in old else None
    pipeline = (out / "pipeline.json").is_file() or any(out.glob("phase-[0-9][0-9]-*"))
    grpo = (out / "metrics.jsonl").is_file() or (out / "checkpoints").is_dir()
    if not (pipeline or grpo or old):
        held = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise SearchE1Error(f"--out {out}: holds files but no searche1 run ({held}) (fix: give a new or empty "
                            "folder; with --resume, the folder of the run to continue)")
    if pipeline and cfg.schedule == ["grpo"] or grpo and not pipeline and cfg.schedule != ["grpo"]:
        what = "a pipeline run (phase-NN-* folders)" if pipeline else "a GRPO-only run"
        raise SearchE1Error(f"--out {out}: holds {what}, but the config's schedule is {cfg.schedule} (fix: the "
                            "config this run was started with, or another --out)")
    if not resume or old is None or os.environ.get("RANK", "0") != "0":
        return
    new = json.loads(json.dumps(to_dict(cfg)))
    changed = [f"{k}: {a!r} → {b!r}" for k, a, b in _diff(old, new)]
    if changed:
        n = 1
        while (out / f"config.previous-{n}.json").exists():
            n += 1
        (out / f"config.previous-{n}.json").write_text(json.dumps(old, indent=2) + "\n")
        console.print(f"[yellow]resuming {out} with {len(changed)} changed config field(s)[/]: "
                      + "; ".join(changed) + f" (the run's previous config is kept as config.previous-{n}.json)")


def _diff(a, b, prefix: str = ""):
    """(dotted key, old, new) of the values that differ between two nested dicts; absent values are None."""
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            yield f"{prefix}{k}", x, y


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="HF model folder or embedded model name")],
    data: Annotated[list[Path], typer.Option(help="QA file(s) or folder(s); repeat the option for several")],
    index: Annotated[Optional[Path], typer.Option(help="index folder (in-process retrieval)")] = None,
    retriever_url: Annotated[Optional[str], typer.Option(help="retrieval server URL instead of --index")] = None,
    mode: Annotated[str, typer.Option(help="agent | naive-rag | direct")] = "agent",
    limit: Annotated[Optional[int], typer.Option(help="first N questions per dataset")] = None,
    offset: Annotated[int, typer.Option(help="skip the first N questions of each dataset")] = 0,
    batch_size: Annotated[int, typer.Option(help="episodes decoded together")] = 32,
    max_turn_tokens: Annotated[int, typer.Option(help="new tokens per turn")] = 128,
    max_searches: Annotated[int, typer.Option(help="search budget per question (agent mode)")] = 4,
    topk: Annotated[int, typer.Option(help="passages per search")] = 3,
    max_doc_tokens: Annotated[int, typer.Option(help="tokens kept of each passage")] = 96,
    turn_start: Annotated[str, typer.Option(
        help="free | constrained (agent mode: turns open only with a tag)")] = "free",
    engine: Annotated[str, typer.Option(
        help="hf | vllm (a vLLM engine on the model folder, GPU) | vllm-server")] = "hf",
    vllm_url: Annotated[Optional[str], typer.Option(help="vllm-server: the `vllm serve` of this model")] = None,
    vllm_gpu_memory_utilization: Annotated[float, typer.Option(help="vllm: share of GPU memory")] = 0.85,
    vllm_kwargs: Annotated[str, typer.Option(help="vllm: JSON object of extra vllm.LLM keywords")] = "{}",
    out: Annotated[Optional[Path], typer.Option(help="write the results JSON here (+ .samples.jsonl); finished "
                                                     "datasets are kept in .partial.jsonl until the end, so the "
                                                     "same command after an interruption skips them")] = None,
) -> None:
    """Greedy evaluation: EM/F1, searches, valid format per dataset and the average; markdown table on stdout."""
    from searche1.checkpoint import refuse_run_folder
    from searche1.data.qa import load_qa_files
    from searche1.evaluate import EvalConfig, evaluate, markdown_table, resume_key
    from searche1.models import ModelConfig, load_policy, load_tokenizer, resolve_model_path

    try:
        import json

        try:
            extra = json.loads(vllm_kwargs)
        except json.JSONDecodeError as e:
            raise SearchE1Error(f"--vllm-kwargs: not JSON ({e}); fix: an object such as '{{\"enforce_eager\": true}}'")
        cfg = _options(EvalConfig, {"mode": mode, "limit": limit, "offset": offset, "batch_size": batch_size,
                                    "max_turn_tokens": max_turn_tokens, "max_searches": max_searches,
                                    "topk": topk, "max_doc_tokens": max_doc_tokens, "turn_start": turn_start,
                                    "engine": engine, "vllm_url": vllm_url,
                                    "vllm_gpu_memory_utilization": vllm_gpu_memory_utilization,
                                    "vllm_kwargs": extra})
        if mode != "direct" and (index is None) == (retriever_url is None):
            raise SearchE1Error("--index/--retriever-url: modes agent and naive-rag need exactly one (an index "
                                "folder, or a retrieval server's URL)")
        _check_out_file(out)
        datasets = load_qa_files(data)
        picked = {k: len(v[offset:][:limit]) for k, v in datasets.items()}
        if not any(picked.values()):
            raise SearchE1Error(f"--offset {offset}: skips every question (the largest dataset has "
                                f"{max(map(len, datasets.values()))}) (fix: a smaller --offset)")
        if not all(picked.values()):
            console.print(f"[yellow]--offset {offset} leaves no question of: "
                          f"{', '.join(k for k, n in picked.items() if not n)}[/]")
        refuse_run_folder(model, "--model")
        retriever = _retriever(index, retriever_url) if mode != "direct" else None
        if retriever is not None:  # a server that is down fails now, not after the model has loaded
            retriever.search(["searche1 eval: retriever check"], 1)
        if cfg.engine == "hf":
            policy, tok = load_policy(ModelConfig(name_or_path=model))
            sampler = None
        else:  # no HF model: vLLM loads the folder itself
            from searche1.rollout.factory import saved_model_engine

            path = resolve_model_path(model)
            policy, tok = None, load_tokenizer(path)
            sampler = saved_model_engine(cfg.rollout(), path, tok, retriever)
    except (SearchE1Error, ValueError) as e:
        _fail(e)
    try:
        results = evaluate(policy, tok, retriever, datasets, cfg, engine=sampler,
                           samples_out=out.with_suffix(".samples.jsonl") if out else None,
                           resume=resume_key(model, cfg) if out else None)
    except SearchE1Error as e:  # e.g. the retrieval server went down during a naive-rag search
        _fail(e)
    except KeyboardInterrupt:
        hint = ("the same command skips the datasets it finished" if out else
                "nothing was kept (with --out, finished datasets are kept and the same command skips them)")
        console.print(f"[yellow]interrupted[/]: {hint}")
        raise typer.Exit(130)
    results["settings"]["model"] = model
    typer.echo(markdown_table(results))
    if out:
        from searche1.io import write_json

        write_json(out, results)
        console.print(f"results → {out}")


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="baseline: an eval JSON (with X.samples.jsonl beside it) or samples file")],
    b: Annotated[Path, typer.Argument(help="the evaluation compared against the baseline (same questions)")],
    boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 10_000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="write the statistics JSON here")] = None,
) -> None:
    """Paired comparison of two evaluations of the same questions: is B's gain over A beyond noise?
    Per dataset: EM, wins/losses, exact McNemar p; average: Δ with a stratified paired-bootstrap 95% CI."""
    from searche1.significance import compare as paired_compare
    from searche1.significance import markdown, read_samples

    try:
        if boot < 100:
            raise SearchE1Error(f"--boot {boot}: use at least 100 resamples")
        _check_out_file(out)
        result = paired_compare(read_samples(a), read_samples(b), n_boot=boot, seed=seed)
    except SearchE1Error as e:
        _fail(e)
    typer.echo(markdown(result, a.stem, b.stem))
    if result["only_in_a"] or result["only_in_b"]:
        console.print(f"[yellow]compared the {result['average']['n']} shared questions; {result['only_in_a']} only "
                      f"in {a.name}, {result['only_in_b']} only in {b.name}[/yellow]")
    if out:
        from searche1.io import write_json

        write_json(out, {**result, "a": str(a), "b": str(b)})
        console.print(f"results → {out}")


@app.command("config-reference")
def config_reference() -> None:
    """Print the configuration reference (every field of the training, warm-up and evaluation configs) as markdown."""
    typer.echo(render_config_reference())


def render_config_reference() -> str:
    from searche1.config import describe
    from searche1.demo import DemoConfig
    from searche1.evaluate import EvalConfig
    from searche1.pipeline import PipelineConfig
    from searche1.warmup import WarmupConfig

    parts = ["# Configuration reference", "",
             "Generated by `searche1 config-reference` from the config dataclasses; YAML keys nest with the dots.", ""]
    for title, cls in (("Training (`searche1 train --config`)", PipelineConfig),
                       ("Warm-up (`searche1 warmup`)", WarmupConfig), ("Evaluation (`searche1 eval`)", EvalConfig),
                       ("Demo (`searche1 demo --config`): the training fields with the demo's defaults, plus "
                        "`warmup` and `eval_limit`", DemoConfig)):
        parts += [f"## {title}", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, tp, default, help_ in describe(cls):
            parts.append(f"| `{name}` | {tp.replace('|', '/')} | `{default}` | {help_.replace('|', '/')} |")
        parts.append("")
    return "\n".join(parts)


@app.command()
def demo(
    data: Annotated[Optional[Path], typer.Option(help="searchqa-style folder (corpus.jsonl, train/, dev/); default: "
                                                      "$SEARCHE1_SEARCHQA, else ../shared/data/searchqa beside the "
                                                      "working folder or this checkout if present, else a synthetic "
                                                      "world")] = None,
    out: Annotated[Path, typer.Option(
        help="working folder; rerun with the same --out to continue")] = Path("runs/demo"),
    synthetic: Annotated[bool, typer.Option(help="force the synthetic world even if searchqa is present")] = False,
    config: Annotated[Optional[Path], typer.Option(
        help="demo YAML (default: built in = configs/demo-cpu.yaml)")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a config field: --set grpo.steps=5")] = [],
) -> None:
    """The main job on a CPU: warm-up → GRPO → OFSD on SmolLM2-135M with BM25 search, and a before/after table."""
    from searche1.config import load_config
    from searche1.demo import DemoConfig, run_demo

    try:
        cfg = load_config(DemoConfig, config, _overrides(set_))
        run_demo(cfg, data=data, out=out, synthetic=synthetic)
    except (SearchE1Error, FileExistsError, ValueError) as e:
        _fail(e)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: run the same command again to continue from {out}")
        raise typer.Exit(130)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (searche1 train --out, or a demo's run/)")],
    out: Annotated[Optional[Path], typer.Option(help="report folder (default RUN_DIR/report)")] = None,
) -> None:
    """A markdown report with PNG plots (reward, dev EM, format, searches, OFSD KL, EM per dataset per phase)."""
    from searche1.report import write_report

    try:
        path = write_report(run_dir, out)
    except (SearchE1Error, ValueError) as e:
        _fail(e)
    console.print(f"[green]report[/] → {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
