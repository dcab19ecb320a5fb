"""Per-step host timing of vLLM's engine core (scheduler, model runner, block-table writes), on
when BENCH_STEP_DIR is set: `PYTHONPATH=bench/step_site:$PYTHONPATH`. Read the result with
`bench/step_summary.py`.

A measuring tool only, like py-spy: when the engine core imports vLLM's scheduler, engine core
and V2 model runner modules, a few of their methods are wrapped (timing around the call, nothing
else changes). Each engine-core process appends one record per call to
BENCH_STEP_DIR/<pid>.jsonl (written by a thread every half second):
`[wall-clock start, kind, seconds, a, b]`, where kind and (a, b) are

    step            EngineCoreProc._process_engine_step (a whole engine step)    -, -
    sched           Scheduler.schedule              running requests, scheduled tokens
    update          Scheduler.update_from_output    running requests, -
    exec            GPUModelRunner.execute_model (V2 runner)                      -, -
    sample          GPUModelRunner.sample_tokens (logits, sampling, output copy)  -, -
    bt              BlockTables.apply_staged_writes  staged rows, staged block ids

and parts of `exec`: `exec.requests` (GPUModelRunner.update_requests), `exec.inputs`
(.prepare_inputs), `exec.blocks` (.prepare_attn: block tables, slot mappings), `exec.mm`
(DefaultModelState.get_mm_embeddings: multimodal models only), `exec.rope` (.prepare_inputs:
M-RoPE positions), `exec.attn` (.prepare_attn: attention metadata), `exec.graph`
(CudaGraphManager.run_fullgraph: a full CUDA graph's replay);
and one line names the process's model (`{"model": ..., "pid": ...}`, from its scheduler,
written with the first records after the first schedule)."""

import os

if os.environ.get("BENCH_STEP_DIR"):
    import collections
    import functools
    import importlib.abc
    import json
    import sys
    import threading
    import time

    _dir = os.environ["BENCH_STEP_DIR"]
    _records = collections.deque()       # appended by the engine core's thread, drained by _writer
    _state = {"model": None}

    def _flush() -> None:
        batch = []
        while _records:
            batch.append(_records.popleft())
        if not batch:
            return
        os.makedirs(_dir, exist_ok=True)
        with open(os.path.join(_dir, f"{os.getpid()}.jsonl"), "a") as f:
            if _state["model"] is not None and not _state.get("named"):
                _state["named"] = True       # known from the first schedule on (not in start-up runs)
                f.write(json.dumps({"model": _state["model"], "pid": os.getpid()}) + "\n")
            f.writelines(json.dumps(r) + "\n" for r in batch)

    def _writer() -> None:
        while True:
            time.sleep(0.5)
            _flush()

    def _timed(kind, fn, extra=None, before=None):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            pre = before(self) if before else None
            wall = time.time()
            t = time.perf_counter()
            out = fn(self, *args, **kwargs)
            dur = time.perf_counter() - t
            a, b = extra(self, out, pre) if extra else (None, None)
            _records.append([wall, kind, dur, a, b])
            return out
        return wrapper

    def _scheduler(module):
        cls = module.Scheduler
        threading.Thread(target=_writer, name="bench-step-writer", daemon=True).start()

        def sched_extra(self, out, _):
            if _state["model"] is None:
                _state["model"] = self.vllm_config.model_config.model
            return len(self.running), out.total_num_scheduled_tokens

        cls.schedule = _timed("sched", cls.schedule, sched_extra)
        cls.update_from_output = _timed("update", cls.update_from_output,
                                        lambda self, out, pre: (pre, None),
                                        lambda self: len(self.running))

    # Methods timed as they are, no extra fields: module -> (class, {method: kind}).
    _PLAIN = {
        "vllm.v1.engine.core": ("EngineCoreProc", {"_process_engine_step": "step"}),
        "vllm.v1.worker.gpu.model_runner": ("GPUModelRunner", {
            "execute_model": "exec", "sample_tokens": "sample", "update_requests": "exec.requests",
            "prepare_inputs": "exec.inputs", "prepare_attn": "exec.blocks"}),
        "vllm.v1.worker.gpu.model_states.default": ("DefaultModelState", {
            "get_mm_embeddings": "exec.mm", "prepare_inputs": "exec.rope", "prepare_attn": "exec.attn"}),
        "vllm.v1.worker.gpu.cudagraph_utils": ("CudaGraphManager", {"run_fullgraph": "exec.graph"}),
    }

    def _plain(name):
        def patch(module):
            class_name, kinds = _PLAIN[name]
            cls = getattr(module, class_name)
            for method, kind in kinds.items():
                setattr(cls, method, _timed(kind, getattr(cls, method)))
        return patch

    def _block_table(module):
        cls = module.BlockTables

        def staged(self):
            tables = self.block_tables
            return (sum(len(t._staged_write_indices) for t in tables),
                    sum(len(t._staged_write_contents) for t in tables))

        cls.apply_staged_writes = _timed("bt", cls.apply_staged_writes, lambda self, out, pre: pre, staged)

    _TARGETS = {"vllm.v1.core.sched.scheduler": _scheduler, "vllm.v1.worker.gpu.block_table": _block_table,
                **{name: _plain(name) for name in _PLAIN}}

    class _Finder(importlib.abc.MetaPathFinder):
        """Runs the patch for a target module right after the module itself has run."""

        def find_spec(self, name, path, target=None):
            if name not in _TARGETS:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            exec_module = spec.loader.exec_module

            def patched(module, _exec=exec_module, _patch=_TARGETS[name]):
                _exec(module)
                _patch(module)

            spec.loader.exec_module = patched
            return spec

    sys.meta_path.insert(0, _Finder())
    import atexit
    atexit.register(_flush)
