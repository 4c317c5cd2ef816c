"""Fast greedy generation: an own prefill + decode loop over a preallocated KV cache.

`FastGenerator` is a `Generator` (same constructor, same `generate(requests, sampling) -> list[str]`), so
`run_rank(load_generator=FastGenerator)` works unchanged, and the plain path stays there as the reference.
Its settings `max_wave_rows`, `memory_fraction` and `compile` are set by the caller before a greedy call
(`run_rank` sets them from the `stage_a` settings, whose defaults are in the config schema).
Greedy settings give what `Generator.generate` gives, token for token. Sampling (temperature > 0), a
repetition penalty, or generation-config options that change the greedy choice (beams, banned words, ...)
go to the plain `Generator.generate`; `generation_config.min_new_tokens` is honoured.

How a greedy call runs:
1. Requests are ordered longest prompt first and cut into waves (rows decoded together: as many as
   `memory_fraction` of the free device memory holds the KV cache of, at most `max_wave_rows`), and each
   wave into prefill chunks of about `prefill_tokens` tokens; similar lengths share a batch, so little is padding.
2. A background thread preprocesses the chunks ahead of the model: the project's `encode` (on CUDA, its
   copies go on a side stream) and the M-RoPE positions of each prompt (`get_rope_index`, once per prompt).
3. Each chunk is prefilled by the model's own forward (vision tower, deepstack); its keys and values go into
   the wave's static cache, right-aligned at the wave's longest prompt, so that every row writes the same
   cache column per step.
4. Decode runs a step function that advances its own state on the device (token, positions + 1, cache
   column + 1, stop flags), so on CUDA it is captured once as a CUDA graph and replayed. A row that chose a
   stop token pads from then on, as `generate` does; once half the rows have stopped, the wave shrinks to the
   live rows (graph captured again), so finished rows stop costing work.

`sdpa_backends` can restrict the attention kernels; by default torch picks (cuDNN first on Hopper). cuDNN costs
milliseconds of host time a call (what makes plain decoding take ~0.1 s a step at batch 1), but inside a
CUDA graph that cost is gone and its decode kernel measured faster than the others.

`compile` (`always`, or `auto`: on CUDA only) runs the model's small ops compiled while a call lasts: the RMSNorms and
MLPs, and the text and vision rotary embeddings, each several elementwise kernels in eager mode, become one or
two fused kernels. On one H200 (4B-shaped model, 512 images, one wave) that cut prefill by about a fifth (14.8 s
to 11.4 s) and decode steps from 46 to 41 ms: 24.8 to 30.5 images/s.
Fused kernels round differently, so bf16 outputs may differ from eager ones (as between any two kernels);
fp32 outputs are checked equal to plain `generate` by bench/stage_a_gpu.py.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.qwen3_vl import modeling_qwen3_vl as qwen3_vl

from vlqc.inference.generation import Generator, Request, resized
from vlqc.inference.prompts import hf_messages
from vlqc.inference.sampling import Sampling

# Generation-config options under which `generate` would not pick the plain argmax; the fast path leaves them
# to the plain one.
GREEDY_CHANGING_OPTIONS = (
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "min_length",
    "exponential_decay_length_penalty",
    "guidance_scale",
)
# Cache columns come in multiples of this, so each row of a cache or mask starts aligned for the attention kernels.
CACHE_ALIGN = 64
# A prefill chunk of fewer rows takes prompts of other lengths too: a small forward costs mostly host time.
MIN_CHUNK_ROWS = 4
COMPILE_CHOICES = ("auto", "always", "never")  # FastGenerator.compile; auto: on CUDA only
# What `compile` fuses: module classes (their forward) and Qwen3-VL module functions that are chains of small ops.
FUSED_MODULES = (qwen3_vl.Qwen3VLTextRMSNorm, qwen3_vl.Qwen3VLTextMLP)
FUSED_FUNCTIONS = ("apply_rotary_pos_emb", "apply_rotary_pos_emb_vision")


@dataclass(frozen=True)
class Wave:
    """Rows decoded together: request indices longest prompt first, cut into prefill chunks."""

    rows: list[int]
    prompt_len: int  # the longest prompt: the cache column where decoding starts
    chunks: list[list[int]]  # consecutive runs of `rows`


def plan_waves(lengths: Sequence[int], rows_for: Callable[[int], int], prefill_tokens: int) -> list[Wave]:
    """Waves over requests of the given prompt lengths, longest first; `rows_for(longest prompt)` caps a wave's
    rows. A chunk holds as many rows as fit `prefill_tokens` once padded (at least one), all of one length
    once it has `MIN_CHUNK_ROWS`: without padding the prefill needs no mask and attention runs the causal
    flash kernel."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    waves: list[Wave] = []
    start = 0
    while start < len(order):
        longest = lengths[order[start]]
        rows = order[start : start + max(1, rows_for(longest))]
        waves.append(Wave(rows, longest, _chunks(rows, lengths, prefill_tokens)))
        start += len(rows)
    return waves


def _chunks(rows: list[int], lengths: Sequence[int], prefill_tokens: int) -> list[list[int]]:
    chunks: list[list[int]] = []
    for row in rows:
        chunk = chunks[-1] if chunks else []
        # Rows come longest first: a chunk pads to the length of its first row.
        fits = bool(chunk) and (len(chunk) + 1) * lengths[chunk[0]] <= prefill_tokens
        if fits and (lengths[row] == lengths[chunk[0]] or len(chunk) < MIN_CHUNK_ROWS):
            chunk.append(row)
        else:
            chunks.append([row])
    return chunks


def cache_columns(prompt_len: int, max_new_tokens: int) -> int:
    """KV cache length of a wave: the prompt plus one column per decode step (the last token is never fed)."""
    needed = prompt_len + max_new_tokens - 1
    return -(-needed // CACHE_ALIGN) * CACHE_ALIGN


@dataclass(frozen=True)
class Greedy:
    """The choice `generate` makes without sampling: the argmax, with the stop tokens barred before
    `min_new` tokens, and the pad token for a row that has already stopped."""

    stop: torch.Tensor  # (k,) stop token ids
    pad: int
    min_new: int

    def choose(self, logits: torch.Tensor, step: torch.Tensor, stopped: torch.Tensor | None = None) -> torch.Tensor:
        if self.min_new:
            barred = torch.where(step < self.min_new, float("-inf"), logits.index_select(1, self.stop))
            logits = logits.index_copy(1, self.stop, barred)
        token = logits.argmax(-1)
        return token if stopped is None else torch.where(stopped, self.pad, token)

    def stops(self, token: torch.Tensor) -> torch.Tensor:
        return (token[:, None] == self.stop).any(-1)


def cut_at_stop(tokens: list[int], stop: set[int]) -> list[int]:
    """The tokens up to and including the first stop token (what follows is padding)."""
    end = next((i + 1 for i, token in enumerate(tokens) if token in stop), len(tokens))
    return tokens[:end]


@dataclass
class DecodeState:
    """Device tensors of one wave's rows; the decode step reads and advances them in place."""

    rows: list[int]  # request index of each batch row
    prompt_len: int
    tokens: torch.Tensor  # (B,) the token each row feeds next
    positions: torch.Tensor  # (3, B) its M-RoPE position (time, height, width)
    attend: torch.Tensor  # (B, C) bool: the cache columns each row attends to
    keys: list[torch.Tensor]  # per layer (B, kv_heads, C, head_dim)
    values: list[torch.Tensor]
    out: torch.Tensor  # (B, max_new_tokens) chosen tokens, pad after a stop
    stopped: torch.Tensor  # (B,) bool
    column: torch.Tensor  # (1,) the cache column the next step writes
    step: torch.Tensor  # (1,) the index in `out` of the token the next step chooses

    def select(self, keep: torch.Tensor) -> DecodeState:
        """The same wave with only the rows where `keep` is true."""
        index = keep.nonzero().squeeze(1)
        return DecodeState(
            rows=[self.rows[i] for i in index.tolist()],
            prompt_len=self.prompt_len,
            tokens=self.tokens[index],
            positions=self.positions[:, index],
            attend=self.attend[index],
            keys=[k[index] for k in self.keys],
            values=[v[index] for v in self.values],
            out=self.out[index],
            stopped=self.stopped[index],
            column=self.column,
            step=self.step,
        )

    def outputs(self, where: torch.Tensor) -> dict[int, torch.Tensor]:
        return {self.rows[i]: self.out[i] for i in where.nonzero().squeeze(1).tolist()}


@dataclass
class RunStats:
    """What the last `generate` call did; times are host wall seconds."""

    fast: bool = False
    waves: int = 0
    chunks: int = 0
    decode_steps: int = 0
    compactions: int = 0
    graph_captures: int = 0
    encode_s: float = 0.0  # spent preprocessing on the background thread
    wait_s: float = 0.0  # the model waited for preprocessing
    prefill_s: float = 0.0
    decode_s: float = 0.0
    wave_rows: list[int] = field(default_factory=list)


class FastGenerator(Generator):
    """`Generator` with a fast greedy path; see the module docstring."""

    # Set by the caller before a greedy call: Stage-A sets them from its settings (stage_a.wave_rows,
    # wave_memory_fraction, compile), whose defaults live in the config schema.
    max_wave_rows: int | None = None
    memory_fraction: float | None = None
    compile: str | None = None  # one of COMPILE_CHOICES
    prefill_tokens = 16384
    cuda_graphs = True
    sdpa_backends: tuple[SDPBackend, ...] | None = None  # None: whatever torch picks

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_pixels: int | None = None,
        *,
        base: str | Path | None = None,
        attn_implementation: str | None = None,
    ):
        # An adapter comes merged (vlqc.inference.generation.load_model): the decode loop reaches into the
        # model's own layers. attn_implementation applies to the prefill (the model's forward); decode steps
        # call scaled_dot_product_attention themselves.
        super().__init__(
            model_dir,
            device=device,
            dtype=dtype,
            max_pixels=max_pixels,
            base=base,
            attn_implementation=attn_implementation,
        )
        self.stats = RunStats()
        self._text_tokens: dict[tuple[str, str, int], int] = {}

    # --- interface ------------------------------------------------------------------------------------

    def plain_path_reasons(self, sampling: Sampling) -> list[str]:
        """Why `sampling` with this model's generation config needs the plain path (empty: it does not)."""
        config = self.model.generation_config
        reasons = [name for name in GREEDY_CHANGING_OPTIONS if getattr(config, name, None)]
        if sampling.temperature > 0:
            reasons.append("temperature")
        if sampling.repetition_penalty != 1.0:
            reasons.append("repetition_penalty")
        if (getattr(config, "num_beams", 1) or 1) > 1:
            reasons.append("num_beams")
        return reasons

    def generate(self, requests: list[Request], sampling: Sampling = Sampling()) -> list[str]:
        if not requests or self.plain_path_reasons(sampling):
            self.stats = RunStats()
            return super().generate(requests, sampling)
        ids = self.generate_ids(requests, sampling)
        return self.processor.batch_decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def generate_ids(self, requests: list[Request], sampling: Sampling = Sampling()) -> list[list[int]]:
        """New token ids of each request (fast greedy path), up to and including its stop token."""
        unset = [name for name in ("max_wave_rows", "memory_fraction", "compile") if getattr(self, name) is None]
        if unset:
            raise ValueError(f"set FastGenerator's {', '.join(unset)} before a greedy call (run_rank sets them)")
        self.stats = RunStats(fast=True)
        greedy = self._greedy()
        max_new = sampling.max_new_tokens
        lengths = [self.prompt_length(r) for r in requests]
        waves = plan_waves(lengths, lambda longest: self._wave_rows(longest, max_new), self.prefill_tokens)
        chunks = [[requests[i] for i in chunk] for wave in waves for chunk in wave.chunks]
        outputs: dict[int, torch.Tensor] = {}
        depth = max(len(wave.chunks) for wave in waves)
        with self._small_ops(), _Prefetcher(self._encode_ahead, chunks, depth) as batches:
            for wave in waves:
                outputs.update(self._run_wave(wave, batches, greedy, max_new))
        self.stats.encode_s = batches.busy_s
        rows = torch.stack([outputs[i] for i in range(len(requests))]).tolist()
        stop = set(greedy.stop.tolist())
        return [cut_at_stop(row, stop) for row in rows]

    @torch.inference_mode()
    def reference_ids(self, requests: list[Request], sampling: Sampling = Sampling()) -> list[list[int]]:
        """What `generate_ids` must return, from the plain path: `model.generate` greedy on one padded batch."""
        batch = self.encode(requests)
        output = self.model.generate(
            **batch, max_new_tokens=sampling.max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None
        )
        stop = set(self._greedy().stop.tolist())
        return [cut_at_stop(row, stop) for row in output[:, batch["input_ids"].shape[1] :].tolist()]

    def prompt_length(self, request: Request) -> int:
        """Tokens of the request's prompt as `encode` makes it, from the image sizes (no pixels processed)."""
        key = (request.system, request.user, len(request.images))
        if key not in self._text_tokens:
            text = self.processor.apply_chat_template(
                hf_messages(request.system, request.user, request.images),
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,
            )
            # Each image is one pad token in the text; the processor widens it to the image's tokens.
            self._text_tokens[key] = len(self.processor.tokenizer(text)["input_ids"]) - len(request.images)
        return self._text_tokens[key] + sum(self.image_tokens(image.height, image.width) for image in request.images)

    # --- planning -------------------------------------------------------------------------------------

    def image_tokens(self, height: int, width: int) -> int:
        """Tokens the processor makes of an image of this size."""
        ip = self.processor.image_processor
        h, w = resized(self.processor, height, width)
        return (h // ip.patch_size) * (w // ip.patch_size) // ip.merge_size**2

    def _wave_rows(self, prompt_len: int, max_new: int) -> int:
        """Rows whose KV cache fits `memory_fraction` of the free device memory (`max_wave_rows` off CUDA)."""
        device = torch.device(self.device)
        if device.type != "cuda":
            return self.max_wave_rows
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        text = self.model.config.text_config
        per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * self.model.dtype.itemsize
        per_row = per_token * cache_columns(prompt_len, max_new) + 4 * text.vocab_size  # + the step's logits
        return max(1, min(self.max_wave_rows, int(self.memory_fraction * free) // per_row))

    def _greedy(self) -> Greedy:
        config = self.model.generation_config
        stop = config.eos_token_id
        stop = [] if stop is None else [stop] if isinstance(stop, int) else list(stop)
        pad = config.pad_token_id if config.pad_token_id is not None else (stop[0] if stop else 0)
        return Greedy(torch.tensor(stop, dtype=torch.long, device=self.device), pad, config.min_new_tokens or 0)

    # --- preprocessing --------------------------------------------------------------------------------

    def _encode_ahead(self, requests: list[Request]) -> tuple[Any, torch.Tensor, torch.cuda.Event | None]:
        """Batch and prompt positions, made on the background thread; on CUDA on a side stream, with an event
        that says when they are ready."""
        if torch.device(self.device).type != "cuda":
            batch = self.encode(requests)
            return batch, self._prompt_positions(batch), None
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            batch = self.encode(requests)
            return batch, self._prompt_positions(batch), stream.record_event()

    def _next_batch(self, batches: _Prefetcher) -> tuple[Any, torch.Tensor]:
        started = time.perf_counter()
        batch, positions, ready = next(batches)
        self.stats.wait_s += time.perf_counter() - started
        if ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)
            for tensor in [*batch.values(), positions]:
                # Made on the side stream: keep its memory from reuse until this stream is done with it.
                tensor.record_stream(stream)
        return batch, positions

    def _attention(self) -> AbstractContextManager:
        return nullcontext() if self.sdpa_backends is None else sdpa_kernel(list(self.sdpa_backends))

    def _small_ops(self) -> AbstractContextManager:
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"FastGenerator.compile must be one of {COMPILE_CHOICES}, not {self.compile!r}")
        on = self.compile == "always" or (self.compile == "auto" and torch.device(self.device).type == "cuda")
        return fused_small_ops(self.model) if on else nullcontext()

    # --- one wave -------------------------------------------------------------------------------------

    def _run_wave(self, wave: Wave, batches: _Prefetcher, greedy: Greedy, max_new: int) -> dict[int, torch.Tensor]:
        self.stats.waves += 1
        self.stats.wave_rows.append(len(wave.rows))
        state = self._new_state(wave, greedy, max_new)
        started = time.perf_counter()
        first = 0
        for chunk in wave.chunks:
            self._prefill(*self._next_batch(batches), state, first, greedy)
            first += len(chunk)
            self.stats.chunks += 1
        self._synchronize()
        decode_started = time.perf_counter()
        self.stats.prefill_s += decode_started - started
        outputs = self._decode(state, greedy, max_new)
        self.stats.decode_s += time.perf_counter() - decode_started
        return outputs

    def _new_state(self, wave: Wave, greedy: Greedy, max_new: int) -> DecodeState:
        text = self.model.config.text_config
        rows, columns = len(wave.rows), cache_columns(wave.prompt_len, max_new)
        options = {"device": self.device}
        cache = (rows, text.num_key_value_heads, columns, text.head_dim)
        return DecodeState(
            rows=list(wave.rows),
            prompt_len=wave.prompt_len,
            tokens=torch.zeros(rows, dtype=torch.long, **options),
            positions=torch.zeros(3, rows, dtype=torch.long, **options),
            attend=torch.zeros(rows, columns, dtype=torch.bool, **options),
            keys=[torch.zeros(cache, dtype=self.model.dtype, **options) for _ in range(text.num_hidden_layers)],
            values=[torch.zeros(cache, dtype=self.model.dtype, **options) for _ in range(text.num_hidden_layers)],
            out=torch.full((rows, max_new), greedy.pad, dtype=torch.long, **options),
            stopped=torch.zeros(rows, dtype=torch.bool, **options),
            column=torch.tensor([wave.prompt_len], **options),
            step=torch.tensor([1], **options),
        )

    def _prompt_positions(self, batch: Any) -> torch.Tensor:
        """(4, B, S) positions as `generate` makes them: the text position, then M-RoPE time/height/width."""
        mask = batch["attention_mask"]
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if batch.get("image_grid_thw") is None:
            return text.expand(4, -1, -1)
        rope, _ = self.model.model.get_rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=mask,
        )
        return torch.cat([text[None], rope])

    def _prefill(self, batch: Any, positions: torch.Tensor, state: DecodeState, first: int, greedy: Greedy) -> None:
        """Run the model over one chunk's prompts; fill their cache rows and choose their first tokens."""
        count, length = batch["input_ids"].shape
        if length > state.prompt_len:
            raise RuntimeError(f"a prompt of {length} tokens is longer than the {state.prompt_len} planned for it")
        with self._attention():
            output = self.model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
        rows, columns = slice(first, first + count), slice(state.prompt_len - length, state.prompt_len)
        for layer, keys, values in zip(output.past_key_values.layers, state.keys, state.values):
            keys[rows, :, columns] = layer.keys
            values[rows, :, columns] = layer.values
        state.attend[rows, columns] = batch["attention_mask"].bool()
        state.positions[:, rows] = positions[1:, :, -1] + 1
        token = greedy.choose(output.logits[:, -1], torch.zeros_like(state.step))
        state.tokens[rows] = token
        state.out[rows, 0] = token
        state.stopped[rows] = greedy.stops(token)

    def _decode(self, state: DecodeState, greedy: Greedy, max_new: int) -> dict[int, torch.Tensor]:
        outputs: dict[int, torch.Tensor] = {}
        step = self._step_runner(state, greedy)
        for _ in range(1, max_new):
            live = int((~state.stopped).sum())  # the one host sync of a step
            if not live:
                break
            if 2 * live <= len(state.rows):
                outputs.update(state.outputs(state.stopped))
                state = state.select(~state.stopped)
                step = self._step_runner(state, greedy)
                self.stats.compactions += 1
            step()
            self.stats.decode_steps += 1
        outputs.update(state.outputs(torch.ones_like(state.stopped)))
        return outputs

    def _step_runner(self, state: DecodeState, greedy: Greedy) -> Callable[[], None]:
        def step() -> None:
            self._decode_step(state, greedy)

        if self.cuda_graphs and state.tokens.is_cuda:
            self.stats.graph_captures += 1
            return _GraphedStep(step)
        return step

    def _decode_step(self, state: DecodeState, greedy: Greedy) -> None:
        """Feed each row's last token, choose the next; advances `state` in place with no host sync."""
        lm = self.model.model.language_model
        hidden = lm.embed_tokens(state.tokens[:, None])
        rope = lm.rotary_emb(hidden, state.positions[:, :, None])
        state.attend.index_fill_(1, state.column, True)
        mask = state.attend[:, None, None, :]
        with self._attention():
            for layer, keys, values in zip(lm.layers, state.keys, state.values):
                hidden = _layer_step(layer, hidden, rope, keys, values, state.column, mask)
        token = greedy.choose(self.model.lm_head(lm.norm(hidden))[:, -1], state.step, state.stopped)
        state.out.index_copy_(1, state.step, token[:, None])
        state.stopped |= greedy.stops(token)
        state.tokens.copy_(token)
        state.positions += 1
        state.column += 1
        state.step += 1

    def _synchronize(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)


def _layer_step(
    layer: torch.nn.Module,
    hidden: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor,
    values: torch.Tensor,
    column: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One decoder layer for one new token per row, its key and value written at `column` of the cache."""
    attn = layer.self_attn
    rows, dim = hidden.shape[0], attn.head_dim
    x = layer.input_layernorm(hidden)
    q = attn.q_norm(attn.q_proj(x).view(rows, 1, -1, dim)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(rows, 1, -1, dim)).transpose(1, 2)
    v = attn.v_proj(x).view(rows, 1, -1, dim).transpose(1, 2)
    q, k = qwen3_vl.apply_rotary_pos_emb(q, k, *rope)  # looked up now: `fused_small_ops` may have swapped it
    keys.index_copy_(2, column, k)
    values.index_copy_(2, column, v)
    # With one query token, the query heads that share a KV head are that head's query rows: no repeated KV.
    q = q.reshape(rows, keys.shape[1], -1, dim)
    attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
    hidden = hidden + attn.o_proj(attended.reshape(rows, 1, -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


@cache
def _compiled(function: Callable) -> Callable:
    # Shapes vary with every chunk and wave: compile once for all of them. Rounding to the eager dtype after
    # each op keeps the fused kernels' results as close to eager ones as they can be.
    return torch.compile(function, dynamic=True, options={"emulate_precision_casts": True})


@contextmanager
def fused_small_ops(model: torch.nn.Module) -> Iterator[None]:
    """While the block runs, `model`'s RMSNorm and MLP modules and Qwen3-VL's rotary functions run compiled.
    The functions are globals of transformers' Qwen3-VL module, so for that time they are swapped for every model
    of that code in the process; modules and functions are restored on exit."""
    modules = [module for module in model.modules() if type(module) in FUSED_MODULES]
    functions = {name: getattr(qwen3_vl, name) for name in FUSED_FUNCTIONS}
    try:
        for module in modules:
            module.forward = MethodType(_compiled(type(module).forward), module)
        for name, function in functions.items():
            setattr(qwen3_vl, name, _compiled(function))
        yield
    finally:
        for module in modules:
            del module.forward
        for name, function in functions.items():
            setattr(qwen3_vl, name, function)


class _GraphedStep:
    """A decode step run eagerly once, then captured as a CUDA graph and replayed. The eager run is a real
    step (on a side stream, so that lazy kernel set-up stays out of the capture); the capture only records."""

    def __init__(self, step: Callable[[], None]):
        self._step = step
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        if self._graph is not None:
            self._graph.replay()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: the preprocessing thread may allocate and copy while this thread captures.
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._step()


class _Prefetcher:
    """Runs `encode` over `chunks` in order on one background thread, `depth` chunks ahead of the reader.
    One thread: the tokenizer is not safe to call from two threads at once."""

    def __init__(self, encode: Callable[[list[Request]], Any], chunks: Sequence[list[Request]], depth: int):
        self._encode = encode
        self._todo: Iterator[list[Request]] = iter(chunks)
        self._pending: deque[Future] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlqc-encode")
        self._depth = max(1, depth)
        self.busy_s = 0.0

    def __enter__(self) -> _Prefetcher:
        for _ in range(self._depth):
            self._submit()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __next__(self) -> Any:
        result = self._pending.popleft().result()
        self._submit()
        return result

    def _submit(self) -> None:
        chunk = next(self._todo, None)
        if chunk is not None:
            self._pending.append(self._pool.submit(self._timed_encode, chunk))

    def _timed_encode(self, chunk: list[Request]) -> Any:
        started = time.perf_counter()
        try:
            return self._encode(chunk)
        finally:
            self.busy_s += time.perf_counter() - started
