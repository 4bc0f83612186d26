"""Trains fine-tuning jobs in the background of every gateway process, each in a process of its own.

Each process looks for unfinished jobs every ``fine_tuning.poll_s``; the work is shared through the store
layer: one process checks a job's files (a lease), then a job trains when a process takes one of the
``fine_tuning.workers`` slots and the job's own lease (both with a TTL, renewed while it trains). Training is
``python -m local_engine.training SPEC`` at ``fine_tuning.nice``: the gateway's event loop only reads its
progress lines. A process that stops (a restart, a crash) leaves leases that expire; the job, still
``running``, is then taken again and resumes after its last whole checkpoint (an epoch).

On success the adapter is registered for the tenant as ``ft:BASE:TENANT:SUFFIX:ID``, loaded into the local
engine of the base alias, and the tokens trained are charged to the tenant's ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from errors import GatewayError

from .blobs import lines
from .config import FineTuningConfig
from .files import Files
from .fine_tuning import TERMINAL, FineTunedModel, Jobs, model_name
from .fine_tuning_data import MAX_REPORTED, check
from .poller import Poller
from .state import Gateway

_OWNER = f"{os.getpid()}-{os.urandom(4).hex()}"


class FineTuningRunner(Poller):
    def __init__(self, gateway: Callable[[], Gateway], jobs: Jobs, files: Files) -> None:
        self._gateway = gateway  # read each time: a reloaded config's engines get the adapters too
        self.jobs, self.files, self.config = jobs, files, jobs.config
        self.kv = jobs.kv
        self._served: set[tuple[int, str]] = set()  # (backend, adapter) registered in this process
        super().__init__("fine-tuning", self.config.poll_s)

    async def close(self) -> None:
        """Stops looking for work and stops its trainings (their jobs stay ``running``: the next process to
        take them resumes after their last checkpoint)."""
        tasks = self._stop_looking()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tick(self) -> None:
        """Checks the files of new jobs, starts training the oldest waiting job while a slot is free, and
        hands the engines of this process the fine-tuned adapters they do not have yet."""
        await self._serve_adapters()
        full = False
        for job_id in await self.jobs.ids():
            if job_id in self._working:
                continue
            fields = await self.jobs.fields(job_id)
            if not fields or fields["status"] in TERMINAL:
                continue
            if fields["status"] == "validating_files":
                if await self.kv.set_if_absent(f"ftjob:{job_id}:validate", _OWNER, self.config.lease_s):
                    self._spawn(job_id, self._validate(fields))
                continue
            slot = None if full else await self._take_slot(job_id)
            if slot is None:
                full = True  # every slot busy: the job waits, queued
                continue
            if not await self.kv.set_if_absent(f"ftjob:{job_id}:lease", _OWNER, self.config.lease_s):
                await self.kv.delete(slot)  # another process trains it
                continue
            self._spawn(job_id, self._train(fields, slot))

    async def _take_slot(self, job_id: str) -> str | None:
        for index in range(self.config.workers):
            slot = f"ftslot:{index}"
            if await self.kv.set_if_absent(slot, f"{_OWNER}:{job_id}", self.config.lease_s):
                return slot
        return None

    async def _renew(self, key: str, value: str) -> bool:
        """Extends a lease this process holds; False when another holds it. A lease found gone (expired while
        the store was slow or unreachable) is taken again if still free."""
        holder = await self.kv.get(key)
        if holder is None:
            return await self.kv.set_if_absent(key, value, self.config.lease_s)
        if holder != value:
            return False
        await self.kv.set(key, value, self.config.lease_s)
        return True

    async def _validate(self, fields: dict[str, str]) -> None:
        job_id, tenant = fields["id"], fields["tenant"]
        try:
            await self.jobs.event(job_id, "Validating training file: " + fields["training_file"])
            counts = {}
            for name in ("training_file", "validation_file"):
                file_id = fields.get(name)
                if not file_id:
                    continue
                error = await self._check_file(job_id, tenant, name, file_id)
                if isinstance(error, dict):
                    await self._fail(job_id, error)
                    return
                counts[name] = error
            examples = counts["training_file"]
            if examples < self.config.min_examples or examples > self.config.max_examples:
                error = {
                    "code": "invalid_training_file",
                    "param": "training_file",
                    "message": f"Training file has {examples} example(s), but must have at least "
                    f"{self.config.min_examples} and at most {self.config.max_examples}.",
                }
                await self._fail(job_id, error)
                return
            hyper = resolved(orjson.loads(fields["hyperparameters"]), examples, self.config)
            if (await self.jobs.fields(job_id)).get("cancel_requested"):
                return
            await self.jobs.update(
                job_id, status="queued", examples=str(examples), hyperparameters=orjson.dumps(hyper).decode()
            )
            await self.jobs.event(job_id, "Files validated, moving job to queued state")
        except GatewayError as exc:  # a file deleted meanwhile
            await self._fail(
                job_id, {"code": "invalid_training_file", "param": "training_file", "message": exc.message}
            )
        except Exception:
            self._log.exception("fine-tuning: checking a job's files failed", job_id=job_id)
        finally:
            await self.kv.delete(f"ftjob:{job_id}:validate")

    async def _fail(self, job_id: str, error: dict[str, Any]) -> None:
        if not (await self.jobs.fields(job_id)).get("cancel_requested"):
            await self.jobs.finish(job_id, "failed", error=orjson.dumps(error).decode())

    async def _check_file(self, job_id: str, tenant: str, name: str, file_id: str) -> int | dict[str, str]:
        """The file's example count, or the job's error (each bad line also an event)."""
        checked = await check(lines(await self.files.content(tenant, file_id)))
        if not checked.problems:
            return checked.examples
        for _, message in checked.problems:
            await self.jobs.event(job_id, f"{file_id}: {message}", level="error")
        shown = " ".join(m for _, m in checked.problems[:MAX_REPORTED])
        more = len(checked.problems) - MAX_REPORTED
        kind = name.removesuffix("_file")
        return {
            "code": f"invalid_{kind}_file",
            "param": name,
            "message": f"The job failed due to an invalid {kind} file. {shown}"
            + (f" ({more} more line(s) not shown.)" if more > 0 else ""),
        }

    async def _train(self, fields: dict[str, str], slot: str) -> None:
        job_id = fields["id"]
        lease = f"ftjob:{job_id}:lease"
        job_dir = Path(self.config.dir) / job_id
        process: asyncio.subprocess.Process | None = None
        try:
            fields = await self.jobs.fields(job_id)  # read again under the lease: cancelled meanwhile?
            if fields["status"] in TERMINAL or fields.get("cancel_requested"):
                return
            if fields["status"] == "queued":
                await self.jobs.update(job_id, status="running")
                await self.jobs.event(job_id, "Fine-tuning job started")
            else:
                await self.jobs.event(job_id, "Fine-tuning job resumed")
            spec = await self._spec(fields, job_dir)
            log = await asyncio.to_thread(open, job_dir / "trainer.log", "ab")  # the trainer's stderr
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "local_engine.training",
                    str(spec),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    env=_child_env(),
                )
            finally:
                log.close()  # the child writes through its own descriptor
            lost = asyncio.Event()
            keeper = asyncio.create_task(self._keep(job_id, slot, lease, process, lost))
            try:
                outcome = await self._follow(fields, process)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if lost.is_set():
                self._log.warning("fine-tuning: another process took over the job", job_id=job_id)
            elif (await self.jobs.fields(job_id)).get("cancel_requested"):
                await self.jobs.finish(job_id, "cancelled")
            elif outcome.get("type") == "done":
                await self._succeeded(fields, outcome)
            else:
                last = await asyncio.to_thread(_last_line, job_dir / "trainer.log")
                error = {
                    "code": "training_failed",
                    "param": None,
                    "message": outcome.get("message")
                    or f"The trainer exited with status {process.returncode}"
                    + (f": {last}" if last else "."),
                }
                await self.jobs.finish(job_id, "failed", error=orjson.dumps(error).decode())
        except asyncio.CancelledError:
            raise  # the gateway is stopping: the job stays running, to be resumed
        except Exception as exc:
            self._log.exception("fine-tuning: a job failed", job_id=job_id)
            await self.jobs.finish(
                job_id,
                "failed",
                error=orjson.dumps(
                    {"code": "training_failed", "param": None, "message": f"{type(exc).__name__}: {exc}"}
                ).decode(),
            )
        finally:
            if process is not None and process.returncode is None:
                process.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(process.wait())
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release_all(slot, lease, job_id))

    async def _release_all(self, slot: str, lease: str, job_id: str) -> None:
        if await self.kv.get(slot) == f"{_OWNER}:{job_id}":
            await self.kv.delete(slot)
        if await self.kv.get(lease) == _OWNER:
            await self.kv.delete(lease)

    async def _keep(
        self, job_id: str, slot: str, lease: str, process: asyncio.subprocess.Process, lost: asyncio.Event
    ) -> None:
        """Renews the leases while the trainer runs; stops it when the job is cancelled, or when another
        process holds its lease (then ``lost`` is set: that process trains the job)."""
        while process.returncode is None:
            await asyncio.sleep(min(self.config.lease_s / 3, self.config.poll_s))
            held = await self._renew(slot, f"{_OWNER}:{job_id}") and await self._renew(lease, _OWNER)
            if not held:
                lost.set()
            if not held or (await self.jobs.fields(job_id)).get("cancel_requested"):
                process.kill()
                return

    async def _spec(self, fields: dict[str, str], job_dir: Path) -> Path:
        """Writes the training spec and the job's files (JSONL) into its directory."""
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        paths = {}
        for name in ("training_file", "validation_file"):
            file_id = fields.get(name)
            if not file_id:
                continue
            path = job_dir / f"{name}.jsonl"
            out = await asyncio.to_thread(open, path, "wb")
            try:
                async for chunk in await self.files.content(fields["tenant"], file_id):
                    await asyncio.to_thread(out.write, chunk)
            finally:
                await asyncio.to_thread(out.close)
            paths[name] = str(path)
        hyper = (
            orjson.loads(fields["hyperparameters"])
            if "examples" in fields
            else resolved(orjson.loads(fields["hyperparameters"]), 0, self.config)
        )
        lora = orjson.loads(fields["lora"])
        spec = {
            "base_model": self._base_path(fields["model"]),
            "training_file": paths["training_file"],
            "validation_file": paths.get("validation_file"),
            "output_dir": str(job_dir),
            "n_epochs": hyper["n_epochs"],
            "batch_size": hyper["batch_size"],
            "learning_rate": self.config.base_learning_rate * hyper["learning_rate_multiplier"],
            "rank": lora["rank"],
            "alpha": lora["alpha"],
            "target_modules": lora["target_modules"],
            "seed": int(fields["seed"]),
            "max_seq_len": self.config.max_seq_len,
            "threads": self.config.threads,
            "nice": self.config.nice,
            "device": self.config.device,
            "parent_pid": os.getpid(),
        }
        path = job_dir / "spec.json"
        await asyncio.to_thread(path.write_bytes, orjson.dumps(spec))
        return path

    def _base_path(self, alias: str) -> str:
        config = self._gateway().loaded.config
        found = next(a for a in config.models if a.name == alias)
        local = next(d for d in found.deployments if d.provider == "local")
        return local.model_path or "smollm2"

    async def _follow(self, fields: dict[str, str], process: asyncio.subprocess.Process) -> dict[str, Any]:
        """Records the trainer's progress lines as events and checkpoints; returns its last line."""
        job_id = fields["id"]
        last: dict[str, Any] = {}
        assert process.stdout is not None
        async for raw in process.stdout:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a library printing to stdout
            kind = line.get("type")
            if kind == "started" and line.get("resumed_from"):
                await self.jobs.event(
                    job_id, f"Resumed from checkpoint {line['resumed_from']}", data={"step": 0}
                )
                recorded = {c["step_number"] for c in await self.jobs.checkpoints(job_id)}
                for found in line.get("checkpoints") or []:  # on disk, not on record: its gateway died first
                    if found["step"] not in recorded:
                        await self._checkpoint(fields, found["step"], found["trained_tokens"])
            elif kind == "step":
                await self.jobs.event(
                    job_id,
                    _step_message(line),
                    kind="metrics",
                    data={
                        k: line[k]
                        for k in ("step", "train_loss", "valid_loss", "total_steps", "epoch")
                        if k in line
                    },
                )
            elif kind == "checkpoint":
                await self._checkpoint(fields, line["step"], line["trained_tokens"])
            elif kind in ("done", "error"):
                last = line
        await process.wait()
        return last

    async def _checkpoint(self, fields: dict[str, str], step: int, trained_tokens: int) -> None:
        job_id = fields["id"]
        await self.jobs.update(job_id, trained_tokens=str(trained_tokens))
        await self.jobs.checkpoint(
            job_id,
            {
                "id": f"ftckpt-{job_id.removeprefix('ftjob-')[:12]}-{step}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": self.jobs.now(),
                "fine_tuning_job_id": job_id,
                "step_number": step,
                "fine_tuned_model_checkpoint": f"{_result_name(fields)}:ckpt-step-{step}",
                "metrics": await self._metrics_at(job_id, step),
            },
        )
        await self.jobs.event(job_id, f"Checkpoint created at step {step}")

    async def _metrics_at(self, job_id: str, step: int) -> dict[str, Any]:
        """The metrics of ``step`` (the last before it where that step's line was lost)."""
        for event in await self.jobs.events(job_id):  # newest first
            if event["type"] == "metrics" and event["data"].get("step", 0) <= step:
                return {k: v for k, v in event["data"].items() if k in ("step", "train_loss", "valid_loss")}
        return {}

    async def _succeeded(self, fields: dict[str, str], done: dict[str, Any]) -> None:
        job_id, tenant = fields["id"], fields["tenant"]
        name = _result_name(fields)
        model = FineTunedModel(
            name=name,
            tenant=tenant,
            base=fields["model"],
            path=done["adapter"],
            job=job_id,
            created=self.jobs.now(),
        )
        await self.jobs.register(model)
        await self._serve_adapters()
        tokens = int(done["trained_tokens"])
        cost = math.ceil(
            tokens * self.config.price_per_1m_tokens * 1000
        )  # nano-USD: tokens x $/1M x 1e9 / 1e6
        await self._gateway().pipeline.admission.charge_work(
            tenant, fields["key_id"], name, job_id, tokens, cost
        )
        await self.jobs.finish(job_id, "succeeded", fine_tuned_model=name, trained_tokens=str(tokens))
        await self.jobs.event(job_id, f"New fine-tuned model created: {name}")

    async def _serve_adapters(self) -> None:
        """Registers each fine-tuned model's adapter with every ready local engine of its base alias (in
        process, or a managed worker pool), once per engine: a restarted process, a reloaded config and every
        process of a supervisor serve it too."""
        gateway = self._gateway()
        for model in await self.jobs.models():
            if model.base not in gateway.router:
                continue
            for route in gateway.router.routes(model.base):
                backend = route.backend
                add = getattr(backend, "add_lora", None)  # provider: local (docs/lora.md)
                if add is None or not backend.ready or (id(backend), model.name) in self._served:
                    continue
                self._served.add((id(backend), model.name))
                try:
                    await add(model.name, model.path)
                except Exception as exc:  # a bad or missing directory: the model answers 404 on that engine
                    self._log.error(
                        "fine-tuning: serving an adapter failed", model=model.name, error=str(exc)
                    )


def resolved(hyper: dict[str, Any], examples: int, config: FineTuningConfig) -> dict[str, Any]:
    """The job's hyperparameters with each "auto" decided: ``n_epochs`` the configured default, ``batch_size``
    about a tenth of the examples (1 to 8), ``learning_rate_multiplier`` 1."""
    auto = {
        "n_epochs": config.default_epochs,
        "batch_size": max(1, min(8, examples // 10)),
        "learning_rate_multiplier": 1.0,
    }
    return {k: auto[k] if v == "auto" else v for k, v in hyper.items()}


def _result_name(fields: dict[str, str]) -> str:
    return model_name(fields["model"], fields["tenant"], fields.get("suffix", ""), fields["id"])


def _step_message(line: dict[str, Any]) -> str:
    message = f"Step {line['step']}/{line['total_steps']}: training loss={line['train_loss']:.4f}"
    if "valid_loss" in line:
        message += f", validation loss={line['valid_loss']:.4f}"
    return message


def _last_line(path: Path) -> str:
    """The last line a trainer wrote to stderr (a crash's exception), for the job's error."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _child_env() -> dict[str, str]:
    """The trainer imports ``local_engine`` from where this gateway found it, and reads no model online."""
    env = dict(os.environ)
    spec = importlib.util.find_spec("local_engine")
    if spec is not None and spec.submodule_search_locations:
        root = str(Path(next(iter(spec.submodule_search_locations))).parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env
