"""The constant-state decode engine: greedy decoding as one fixed step replayed per token.

A recurrent model's state does not grow with the sequence, so after the prefill every decode
step has the same shapes and can be captured once in a CUDA graph and replayed. For one batch:

1. Prefill, through the family's prefill (the model's own forward with its cache and the
   fast-prefill kernels patched in; for Mamba / Mamba-2 a forward written out over them), in
   groups of similar length capped in padded tokens; families that ignore the attention mask
   (RWKV) prefill equal lengths only. Each group's state is copied into the
   rows of static buffers of the batch's slot size (1, 2, 4, ... up to the batch size).
2. Decode: ``steps_per_sync`` greedy steps (embedding -> layers -> head -> argmax, the new
   token fed back) run as one CUDA graph per (model, slot size), captured on first use and
   replayed; on CPU the same loop runs eagerly (graphs are CUDA-only), and so does a step that
   cannot be captured (with a warning).
3. After each replay the new tokens come to the host (the only sync): EOS and stop strings are
   checked on the new tokens' text; a finished row keeps its slot, and when at most half the
   slots are live the live rows move to the next smaller slot size (compaction).

Answers are cut exactly as transformers' ``generate`` with the stop-string criterion cuts them
(see :func:`jrt_prompt.generation.result.finish`).
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .families import StateFamily, flatten, unflatten
from .result import Generation, finish, first_stop

STEPS_PER_SYNC = 8  # decode steps per graph replay (and per host check of the new tokens)
MAX_PREFILL_TOKENS = {"cuda": 32768, "cpu": 8192}  # padded tokens per prefill forward
MIN_COMPACT_SLOTS = 8  # below this many slots a decode step costs the same whatever the rows

# Questions read after a stored document: up to this many tokens in captured extend forwards of
# power-of-two lengths up to EXTEND_PIECE (a longer question: one eager forward, whose launches its
# length amortises)
GRAPHED_EXTEND_MAX_TOKENS = 256
EXTEND_PIECE = 64

_EAGER = "eager"  # a decoder whose step could not be captured

# CUDA graphs and their static buffers, per model and slot size; dropped with the model.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def slot_size(rows: int, limit: int) -> int:
    """Slots a batch of ``rows`` decodes in: the next power of two, at most ``limit`` (the batch
    size), so that few distinct graphs serve every batch."""
    size = 1
    while size < rows:
        size *= 2
    return max(rows, min(size, limit))


@dataclass
class _Decoder:
    """Static buffers of one (model, slot size), the cache that points at them, and the graph."""

    slots: int
    steps: int
    tree: object  # the cache's tree with the static buffers as leaves
    cache: object
    state: list[torch.Tensor]
    tokens: torch.Tensor  # [slots] last token of each slot (the next step's input)
    out: torch.Tensor  # [slots, steps] tokens produced by one replay
    graph: object = None
    signature: tuple = field(default_factory=tuple)
    host: list | None = None  # two pinned host buffers for the tokens of one replay (CUDA)
    flip: int = 0
    extenders: dict = field(default_factory=dict)  # piece length -> _Extender on these buffers


@dataclass
class _Extender:
    """One captured extend forward of a decoder's slots by ``ids.shape[1]`` tokens: its static
    token ids and last-position logits; the state is its decoder's static buffers."""

    ids: torch.Tensor  # [slots, length]
    logits: torch.Tensor | None = None  # [slots, vocab] float32
    graph: object = None


def extend_pieces(length: int) -> list[int]:
    """``length`` as a sum of powers of two of at most ``EXTEND_PIECE`` tokens, largest first:
    the lengths of the captured extend forwards a question of ``length`` tokens is read in."""
    pieces = [EXTEND_PIECE] * (length // EXTEND_PIECE)
    rest, size = length % EXTEND_PIECE, EXTEND_PIECE // 2
    while size:
        if rest & size:
            pieces.append(size)
        size //= 2
    return pieces


def _rows_by_length(questions: list[list[int]]) -> dict[int, list[int]]:
    """Row indices of ``questions`` grouped by question length (no padding enters a state)."""
    by_length: dict[int, list[int]] = {}
    for r, q in enumerate(questions):
        by_length.setdefault(len(q), []).append(r)
    return by_length


def _signature(leaves: list[torch.Tensor]) -> tuple:
    return tuple((tuple(t.shape[1:]), t.dtype) for t in leaves)


class DecodeEngine:
    """Greedy decoding of one model; ``use_graphs`` (default: on CUDA) replays CUDA graphs."""

    def __init__(
        self,
        model,
        tokenizer,
        family: StateFamily,
        *,
        steps_per_sync: int = STEPS_PER_SYNC,
        use_graphs: bool | None = None,
        max_prefill_tokens: int | None = None,
        compact: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.device = next(model.parameters()).device
        self.steps = max(1, int(steps_per_sync))
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        if self.use_graphs and self.device.type != "cuda":
            self.use_graphs = False
        self.max_prefill_tokens = max_prefill_tokens or MAX_PREFILL_TOKENS.get(self.device.type, 8192)
        self.compact = compact
        self.pad_id = None

    # ---------------------------------------------------------------------------------------
    # decoders (static buffers + graph) per slot size

    def _store(self) -> dict:
        return _GRAPHS.setdefault(self.model, {})

    def _numerics(self) -> tuple:
        """What changes the captured step besides shapes: the model's inference mode (JRT's
        reference numerics) and autocast (the harness runs JRT models under bf16 autocast)."""
        device = self.device.type
        autocast = torch.is_autocast_enabled(device) if device in ("cuda", "cpu") else False
        dtype = torch.get_autocast_dtype(device) if autocast else None
        return (getattr(self.model.config, "inference_mode", None), autocast, dtype)

    def _decoder(self, slots: int, template_cache) -> _Decoder:
        """The decoder of ``slots`` slots; built from ``template_cache`` (a prefilled cache of this
        model) the first time."""
        key = (self.family.name, slots, self.steps, self.use_graphs, self._numerics())
        store = self._store()
        decoder = store.get(key)
        tree = self.family.tree(template_cache)
        leaves = flatten(tree)
        if decoder is not None and decoder.signature == _signature(leaves):
            return decoder
        state = [torch.empty((slots, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in leaves]
        for buffer, leaf in zip(state, leaves, strict=True):
            buffer.copy_(leaf[:1].expand_as(buffer))
        # The decoder's own cache object (the template's Python structure, sharing no tensor with
        # it once pointed at the static buffers), so the template stays as it was.
        cache = copy.deepcopy(template_cache, memo={id(t): t for t in leaves})
        static_tree = unflatten(tree, state)
        self.family.set_tree(cache, unflatten(static_tree, state))
        decoder = _Decoder(
            slots=slots,
            steps=self.steps,
            tree=static_tree,
            cache=cache,
            state=state,
            tokens=torch.zeros(slots, dtype=torch.long, device=self.device),
            out=torch.zeros(slots, self.steps, dtype=torch.long, device=self.device),
            signature=_signature(leaves),
        )
        store[key] = decoder
        return decoder

    def _run_steps(self, decoder: _Decoder) -> None:
        """``decoder.steps`` greedy steps from ``decoder.tokens``; tokens land in ``decoder.out``."""
        family, cache = self.family, decoder.cache
        for j in range(decoder.steps):
            logits = family.step(self.model, cache, decoder.tokens[:, None])
            nxt = logits.argmax(-1)
            now = flatten(family.tree(cache))
            if any(a is not b for a, b in zip(now, decoder.state, strict=True)):
                for buffer, value in zip(decoder.state, now, strict=True):
                    if value is not buffer:
                        buffer.copy_(value)
                self._point_at_buffers(decoder)
            decoder.tokens.copy_(nxt)
            decoder.out[:, j].copy_(nxt)

    def _fetch(self, decoder: _Decoder):
        """Start copying the last replay's tokens to the host: (host tensor, event or None)."""
        if decoder.out.device.type != "cuda":
            return decoder.out.clone(), None
        if decoder.host is None:
            decoder.host = [
                torch.empty(decoder.out.shape, dtype=torch.long, pin_memory=True) for _ in range(2)
            ]
        host = decoder.host[decoder.flip]
        decoder.flip ^= 1
        host.copy_(decoder.out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    def _point_at_buffers(self, decoder: _Decoder) -> None:
        # Fresh containers each time: a step may assign into the dicts / lists it is given.
        self.family.set_tree(decoder.cache, unflatten(decoder.tree, decoder.state))

    def _replay(self, decoder: _Decoder) -> None:
        self._replay_or_run(decoder, lambda: self._run_steps(decoder), lambda: self._capture(decoder))

    def _replay_or_run(self, holder, run, capture) -> None:
        """Replay ``holder.graph``, captured by ``capture()`` on first use; ``run()`` eagerly
        without graphs or where the capture failed."""
        if self.use_graphs and holder.graph is None:
            capture()
        if not self.use_graphs or holder.graph is _EAGER:
            run()
        else:
            holder.graph.replay()

    def _capture(self, decoder: _Decoder) -> None:
        decoder.graph = self._capture_graph(
            lambda: self._run_steps(decoder), [*decoder.state, decoder.tokens], "the decode step"
        )
        self._point_at_buffers(decoder)

    def _capture_graph(self, run, buffers: list[torch.Tensor], what: str):
        """``run()`` captured in a CUDA graph, or ``_EAGER`` (with a warning) where it cannot be.
        Warm-up on a side stream first (kernel selection, autotuning, allocator); the warm-up
        changes ``buffers`` (the state ``run`` continues), so they are saved and put back."""
        saved = [t.clone() for t in buffers]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        # One memory pool for all graphs of a model: they never run at the same time, and what
        # they leave behind is copied into buffers allocated outside the pool.
        pool = self._store().setdefault("pool", torch.cuda.graph_pool_handle())
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool):
                run()
        except Exception as exc:  # what cannot be captured still runs, eagerly
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(self.device)
            warnings.warn(
                f"{what} of {type(self.model).__name__} could not be captured in a CUDA graph "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                "running it eagerly",
                RuntimeWarning,
                stacklevel=7,
            )
            graph = _EAGER
        for buffer, value in zip(buffers, saved, strict=True):
            buffer.copy_(value)
        return graph

    # ---------------------------------------------------------------------------------------
    # prefill

    def _prefill_groups(self, rows: list[list[int]]) -> list[list[int]]:
        """Positions of ``rows`` (sorted longest first) grouped for prefill forwards."""
        groups: list[list[int]] = []
        for j, ids in enumerate(rows):
            last = groups[-1] if groups else None
            if last is not None:
                width = len(rows[last[0]])
                fits = (len(last) + 1) * width <= self.max_prefill_tokens
                fits = fits and (
                    len(ids) == width if not self.family.masks_padding else 2 * len(ids) >= width
                )
                if fits:
                    last.append(j)
                    continue
            groups.append([j])
        return groups

    def _prefill(self, ids_rows: list[list[int]]):
        """Prefill every group; returns (first tokens [n] on the device, [(group, cache)])."""
        first = torch.empty(len(ids_rows), dtype=torch.long, device=self.device)
        out = []
        for group in self._prefill_groups(ids_rows):
            width = max(len(ids_rows[j]) for j in group)
            input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for r, j in enumerate(group):
                n = len(ids_rows[j])
                input_ids[r, width - n :] = torch.tensor(ids_rows[j], dtype=torch.long)
                mask[r, width - n :] = 1
            input_ids = input_ids.to(self.device)
            mask = mask.to(self.device) if self.family.masks_padding else None
            logits, cache = self.family.prefill(self.model, input_ids, mask)
            first[torch.tensor(group, device=self.device)] = logits.argmax(-1)
            out.append((group, cache))
        return first, out

    # ---------------------------------------------------------------------------------------
    # one batch

    def generate_batch(
        self,
        ids_rows: list[list[int]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] | None,
        slots_limit: int,
        pad_id: int,
    ) -> list[Generation]:
        """Greedy answers for one batch of tokenized prompts (at most ``slots_limit`` rows)."""
        self.pad_id = pad_id
        started = time.perf_counter()
        with torch.inference_mode():
            first, prefilled = self._prefill(ids_rows)
            return self.decode_prefilled(
                first,
                prefilled,
                [len(ids) for ids in ids_rows],
                max_new_tokens=max_new_tokens,
                stop=stop,
                slots_limit=slots_limit,
                started=started,
            )

    def decode_prefilled(
        self,
        first: torch.Tensor,
        prefilled: list,
        prompt_tokens: list[int],
        *,
        max_new_tokens: int,
        stop: Sequence[str] | None,
        slots_limit: int,
        started: float | None = None,
    ) -> list[Generation]:
        """Greedy answers of rows whose prompts are already read: ``first`` [n] is each row's
        first generated token, ``prefilled`` a list of (row indices, cache) whose trees hold those
        rows' states (a prefill's output, or a reused document state continued by a question).
        ``prompt_tokens``: each row's prompt length, as reported in its Generation."""
        eos = self.tokenizer.eos_token_id
        started = time.perf_counter() if started is None else started
        n = len(prompt_tokens)
        with torch.inference_mode():
            slots = slot_size(n, max(slots_limit, n))
            decoder = self._decoder(slots, prefilled[0][1])
            for group, cache in prefilled:
                index = torch.tensor(group, device=self.device)
                leaves = flatten(self.family.tree(cache))
                if _signature(leaves) != decoder.signature:
                    raise RuntimeError("a prefill group's state differs in shape from the batch's")
                for buffer, leaf in zip(decoder.state, leaves, strict=True):
                    buffer.index_copy_(0, index, leaf)
            self._point_at_buffers(decoder)
            if n < slots:  # idle slots decode a copy of row 0, never read
                for buffer in decoder.state:
                    buffer[n:].copy_(buffer[:1].expand_as(buffer[n:]))
            decoder.tokens.zero_()
            decoder.tokens[:n].copy_(first)
            prefilled = None

            generated: list[list[int]] = [[t] for t in first.tolist()]
            ended: list[int | None] = [None] * n  # tokens after which each row finished
            finished_at: list[float | None] = [None] * n
            now = time.perf_counter() - started
            for row in range(n):
                ended[row] = first_stop(self.tokenizer, generated[row], 0, stop or (), eos)
                if ended[row] is not None or max_new_tokens == 1:
                    finished_at[row] = now
            slot_rows = list(range(n)) + [-1] * (slots - n)  # row decoded in each slot
            # The next replay is launched before the host looks at the previous one's tokens, so
            # the GPU never waits on the check; a row that finished in the checked chunk wastes at
            # most one chunk. No replay is launched past max_new_tokens.
            length = 1  # tokens every slot holds after the replays launched so far
            pending = None  # (tokens on the host, copy-done event, slot -> row) of one replay

            def take(chunk) -> None:
                host, done, rows_of = chunk
                if done is not None:
                    done.synchronize()
                tokens = host.tolist()
                now = time.perf_counter() - started
                for s, row in enumerate(rows_of):
                    if row < 0 or finished_at[row] is not None:
                        continue
                    before = len(generated[row])
                    generated[row].extend(tokens[s][: max_new_tokens - before])
                    ended[row] = first_stop(self.tokenizer, generated[row], before, stop or (), eos)
                    if ended[row] is not None or len(generated[row]) >= max_new_tokens:
                        finished_at[row] = now

            def live_slots() -> list[int]:
                return [s for s, row in enumerate(slot_rows) if row >= 0 and finished_at[row] is None]

            while True:
                live = live_slots()
                if pending is not None and self._pays_to_compact(decoder, live):
                    take(pending)  # compaction needs the latest finished rows: wait for them
                    pending = None
                    live = live_slots()
                if pending is None:
                    if not live:
                        break
                    if self._pays_to_compact(decoder, live):
                        decoder, slot_rows = self._compact(decoder, live, slot_rows)
                launched = None
                if live and length < max_new_tokens:
                    self._replay(decoder)
                    launched = (*self._fetch(decoder), list(slot_rows))
                    length += decoder.steps
                if pending is not None:
                    take(pending)
                pending = launched
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        results = []
        for row in range(n):
            ids = generated[row][: ended[row]] if ended[row] is not None else generated[row]
            results.append(
                finish(
                    self.tokenizer,
                    ids,
                    prompt_tokens[row],
                    seconds,
                    stop,
                    max_new_tokens,
                    row_seconds=finished_at[row],
                )
            )
        return results

    def continue_rows(self, cache, questions: list[list[int]], *, slots_limit: int, pad_id: int):
        """Continue the ``n`` rows of a prefilled ``cache`` by the tokens of ``questions`` (one per
        row), one forced token per step through the model's decode step: a one-step decoder
        whose step is captured in a CUDA graph on a GPU (eager elsewhere), replayed per token.

        Questions are aligned at their end: a shorter one starts later, and until it starts its
        row's state is put back after every step (a step changes every row). Returns (each row's
        first generated token [n], the continued state's tensors, ``n`` rows each)."""
        n = len(questions)
        if self.family.extend is not None:
            if self.use_graphs and max(len(q) for q in questions) <= GRAPHED_EXTEND_MAX_TOKENS:
                return self._extend_rows_in_slots(cache, questions, slots_limit=max(slots_limit, 1))
            return self._extend_rows(cache, questions)
        forced = DecodeEngine(
            self.model,
            self.tokenizer,
            self.family,
            steps_per_sync=1,
            use_graphs=self.use_graphs,
            max_prefill_tokens=self.max_prefill_tokens,
            compact=False,
        )
        width = max(len(q) for q in questions)
        starts = [width - len(q) for q in questions]
        with torch.inference_mode():
            slots = slot_size(n, max(slots_limit, n))
            decoder = forced._decoder(slots, cache)
            leaves = flatten(self.family.tree(cache))
            if _signature(leaves) != decoder.signature:
                raise RuntimeError("a document state differs in shape from the model's decode state")
            for buffer, leaf in zip(decoder.state, leaves, strict=True):
                buffer[:n].copy_(leaf)
                if n < slots:  # idle slots step a copy of row 0, never read
                    buffer[n:].copy_(leaf[:1].expand_as(buffer[n:]))
            forced._point_at_buffers(decoder)
            tokens = torch.full((slots, width), pad_id, dtype=torch.long)
            for r, q in enumerate(questions):
                tokens[r, starts[r] :] = torch.tensor(q, dtype=torch.long)
            tokens = tokens.to(self.device)
            start = torch.tensor(starts + [0] * (slots - n), device=self.device)
            for t in range(width):
                held = None
                if any(s > t for s in starts):
                    held = [buffer.clone() for buffer in decoder.state]
                decoder.tokens.copy_(tokens[:, t])
                forced._replay(decoder)
                if held is not None:
                    waiting = start > t
                    for buffer, old in zip(decoder.state, held, strict=True):
                        keep = waiting.view(-1, *([1] * (buffer.dim() - 1)))
                        buffer.copy_(torch.where(keep, old, buffer))
            first = decoder.out[:n, 0].clone()
            state = [buffer[:n].clone() for buffer in decoder.state]
        return first, state

    def _extend_rows(self, cache, questions: list[list[int]]):
        """``continue_rows`` for a family that continues states by many tokens in one forward:
        rows whose questions have the same length go together (no padding enters a state),
        at most ``max_prefill_tokens`` tokens a forward."""
        n = len(questions)
        template = self.family.tree(cache)
        leaves = flatten(template)
        out = [torch.empty_like(leaf) for leaf in leaves]  # every row is written below
        first = torch.empty(n, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            for length, rows in _rows_by_length(questions).items():
                per_forward = max(1, self.max_prefill_tokens // length)
                for start in range(0, len(rows), per_forward):
                    chunk = rows[start : start + per_forward]
                    index = torch.tensor(chunk, device=self.device)
                    part = [leaf.index_select(0, index) for leaf in leaves]
                    ids = torch.tensor([questions[r] for r in chunk], dtype=torch.long, device=self.device)
                    logits = self.family.extend(self.model, unflatten(template, part), ids)
                    first[index] = logits.argmax(-1)
                    for whole, rows_state in zip(out, part, strict=True):
                        whole[index] = rows_state
        return first, out

    def _extend_rows_in_slots(self, cache, questions: list[list[int]], *, slots_limit: int):
        """``_extend_rows`` through the static state buffers of the decoders: rows whose questions
        have the same length go together, at most ``slots_limit`` a batch, padded to a slot size;
        a question is read in pieces of power-of-two lengths (:func:`extend_pieces`), each piece
        one extend forward captured in a CUDA graph per (slot size, piece length) and replayed.
        Eagerly, a short forward is dominated by its launches (about 30 per layer); replayed, a
        16-token question costs about what the GPU needs for it, and the few piece lengths bound
        the number of graphs. Same results as ``_extend_rows`` up to the order of a few sums
        (a state continued piece by piece)."""
        n = len(questions)
        leaves = flatten(self.family.tree(cache))
        out = [torch.empty_like(leaf) for leaf in leaves]  # every row is written below
        first = torch.empty(n, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            for length, rows in _rows_by_length(questions).items():
                for start in range(0, len(rows), slots_limit):
                    chunk = rows[start : start + slots_limit]
                    slots = slot_size(len(chunk), slots_limit)
                    decoder = self._decoder(slots, cache)
                    if _signature(leaves) != decoder.signature:
                        raise RuntimeError("a document state differs in shape from the model's decode state")
                    # idle slots continue a copy of the chunk's first row, never read
                    index = torch.tensor(chunk + [chunk[0]] * (slots - len(chunk)), device=self.device)
                    for buffer, leaf in zip(decoder.state, leaves, strict=True):
                        torch.index_select(leaf, 0, index, out=buffer)
                    ids = torch.tensor(
                        [questions[r] for r in chunk] + [questions[chunk[0]]] * (slots - len(chunk)),
                        dtype=torch.long,
                    ).to(self.device)
                    position = 0
                    for piece in extend_pieces(length):
                        extender = self._extender(decoder, piece)
                        extender.ids.copy_(ids[:, position : position + piece])
                        position += piece
                        self._replay_extend(decoder, extender)
                    rows_index = index[: len(chunk)]
                    first[rows_index] = extender.logits[: len(chunk)].argmax(-1)
                    for whole, buffer in zip(out, decoder.state, strict=True):
                        whole[rows_index] = buffer[: len(chunk)]
        return first, out

    def _extender(self, decoder: _Decoder, length: int) -> _Extender:
        extender = decoder.extenders.get(length)
        if extender is None:
            ids = torch.zeros(decoder.slots, length, dtype=torch.long, device=self.device)
            extender = decoder.extenders[length] = _Extender(ids=ids)
        return extender

    def _run_extend(self, decoder: _Decoder, extender: _Extender) -> None:
        # the extend updates the static buffers in place (a fresh tree of them: it may assign)
        logits = self.family.extend(self.model, unflatten(decoder.tree, decoder.state), extender.ids)
        if extender.logits is None:
            extender.logits = torch.empty_like(logits)
        extender.logits.copy_(logits)

    def _replay_extend(self, decoder: _Decoder, extender: _Extender) -> None:
        def run():
            self._run_extend(decoder, extender)

        def capture():
            what = f"the {extender.ids.shape[1]}-token extend"
            extender.graph = self._capture_graph(run, decoder.state, what)

        self._replay_or_run(extender, run, capture)

    def greedy_ids(self, input_ids: torch.Tensor, new_tokens: int, attention_mask=None, prefill=None):
        """``new_tokens`` greedy token ids per row of an already batched ``input_ids`` [b, l], with
        no stop test (a decode benchmark; the harness mode). ``prefill``: a callable returning
        (last logits, cache) in place of the family's prefill. Returns (ids [b, new_tokens] on the
        host, prefill seconds, decode seconds); the decode runs in whole replays."""
        rows = input_ids.shape[0]
        with torch.inference_mode():
            self._sync()
            started = time.perf_counter()
            if prefill is not None:
                logits, cache = prefill()
            else:
                logits, cache = self.family.prefill(self.model, input_ids, attention_mask)
            first = logits.argmax(-1)
            self._sync()
            prefilled = time.perf_counter()
            decoder = self._decoder(rows, cache)
            for buffer, leaf in zip(decoder.state, flatten(self.family.tree(cache)), strict=True):
                buffer.copy_(leaf)
            self._point_at_buffers(decoder)
            decoder.tokens.copy_(first)
            chunks = [first[:, None]]
            while sum(c.shape[1] for c in chunks) < new_tokens:
                self._replay(decoder)
                chunks.append(decoder.out.clone())
            self._sync()
            done = time.perf_counter()
        ids = torch.cat(chunks, dim=1)[:, :new_tokens].cpu()
        return ids, prefilled - started, done - prefilled

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pays_to_compact(self, decoder: _Decoder, live: list[int]) -> bool:
        return (
            self.compact
            and 0 < len(live)
            and len(live) * 2 <= decoder.slots
            and decoder.slots > MIN_COMPACT_SLOTS
        )

    def _compact(self, decoder: _Decoder, live: list[int], slot_rows: list[int]):
        """Move the live slots' state and last tokens into the decoder of the next smaller size."""
        slots = slot_size(len(live), decoder.slots // 2)
        index = torch.tensor(live + [live[0]] * (slots - len(live)), device=self.device)
        smaller = self._decoder(slots, decoder.cache)
        if smaller is decoder:
            return decoder, slot_rows
        for dst, src in zip(smaller.state, decoder.state, strict=True):
            dst.copy_(src.index_select(0, index))
        smaller.tokens.copy_(decoder.tokens.index_select(0, index))
        self._point_at_buffers(smaller)
        rows = [slot_rows[s] for s in live] + [-1] * (slots - len(live))
        return smaller, rows


def release_graphs(model) -> None:
    """Free the CUDA graphs and static state buffers the engine holds for ``model``."""
    _GRAPHS.pop(model, None)
