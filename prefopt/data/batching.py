"""Batch layouts that compute fewer wasted tokens: prefix sharing and padding-free packing.

A :class:`PackedLayout` places sequences -- or preference pairs whose two responses share one
copy of their prompt -- side by side in a few rows. Every token carries

* a *group*: the sequence or pair it belongs to (``-1`` on padding), and
* a *branch*: ``0`` for the (shared) prompt, ``1, 2, ...`` for each continuation.

A token attends to the earlier tokens of its own group that are in the prompt or in its own
branch. Position ids restart at 0 for every group and continue from the end of the prompt in
every branch, so each continuation sees exactly the context (and positions) it would see alone in
its own padded row: the computation is exact, only the wasted work is gone.

``src``/``labels``/``owner`` say which hidden state predicts which label token and which output
sequence the label counts for, so the LM head runs only on label positions and per-sequence sums
are one ``index_add``.

Packing is first-fit decreasing into rows of ``capacity`` tokens. By default the row length is
chosen among 1-3x the longest item to minimise the padded work ``rows * L * (1 + attention_cost *
L)``: every row is padded to the longest row ``L``, and attention under a custom mask costs
``~L`` per token (``attention_cost`` ~ 1/(6 x hidden size) relative to the matmuls).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.types import PreferenceBatch, SequenceBatch

Tokens = list[int]


@dataclass
class PackedLayout:
    """Tokens of S output sequences laid out in R rows of L tokens.

    input_ids: (R, L) long, padded with ``pad_id``.
    position_ids: (R, L) long, restarting per group (0 on padding).
    group: (R, L) long, group of each token, -1 on padding.
    branch: (R, L) long, 0 = prompt (shared by the group's branches), 1.. = continuation.
    src: (N,) long, flat index ``row * L + col`` of the position whose output predicts label n.
    labels: (N,) long, the label token ids.
    owner: (N,) long, output sequence (0..S-1) each label counts for.
    label_pos: (N,) long, index of each label token within its continuation (0 = its first token).
    num_outputs: S.
    real_tokens: non-padding tokens in the layout (each shared prompt counted once).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    group: torch.Tensor
    branch: torch.Tensor
    src: torch.Tensor
    labels: torch.Tensor
    owner: torch.Tensor
    label_pos: torch.Tensor
    num_outputs: int
    real_tokens: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    def attention_mask(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(R, 1, L, L) mask, True (or 0.0 when ``dtype`` is a float dtype) where query may attend key.

        Padding tokens attend to the padding before them (never to real tokens, and no real token
        attends to them), so no row of the mask is empty.
        """
        L = self.input_ids.shape[1]
        g, b = self.group, self.branch
        causal = torch.ones(L, L, dtype=torch.bool).tril_()
        same_group = g[:, :, None] == g[:, None, :]
        visible_branch = (b[:, None, :] == 0) | (b[:, :, None] == b[:, None, :])
        allowed = (same_group & visible_branch & causal).unsqueeze(1)
        if dtype is None or dtype == torch.bool:
            return allowed
        out = torch.zeros(allowed.shape, dtype=dtype)
        return out.masked_fill_(~allowed, torch.finfo(dtype).min)

    def to(self, device) -> "PackedLayout":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PackedLayout(**moved)


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices whose lengths sum to at most ``capacity`` (items longer get a bin alone)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


CAPACITY_FACTORS = (1.0, 1.25, 1.5, 2.0, 3.0)


def choose_rows(sizes: list[int], capacity: int | None = None, attention_cost: float = 1 / 768) -> list[list[int]]:
    """Rows (lists of item indices) packing items of ``sizes`` tokens: first-fit decreasing into
    ``capacity`` tokens, or, without it, the candidate capacity (``CAPACITY_FACTORS`` x the
    longest item) with the least padded work ``rows * L * (1 + attention_cost * L)``."""
    longest = max(sizes)
    if capacity is not None:
        return _first_fit_decreasing(sizes, max(longest, capacity))
    best, best_cost = None, float("inf")
    for factor in CAPACITY_FACTORS:
        rows = _first_fit_decreasing(sizes, int(longest * factor))
        L = max(sum(sizes[i] for i in r) for r in rows)
        cost = len(rows) * L * (1 + attention_cost * L)
        if cost < best_cost:
            best, best_cost = rows, cost
        if len(rows) == 1:
            break
    return best


def pack(groups: list[tuple[Tokens, list[Tokens]]], pad_id: int, *, padding_free: bool = True,
         capacity: int | None = None, owners: list[list[int]] | None = None,
         attention_cost: float = 1 / 768) -> PackedLayout:
    """Lay out groups ``(prompt, [continuation, ...])`` for one forward pass.

    Each continuation is one output sequence: its labels are its own tokens, predicted from the
    prompt's last token and then from its own tokens. ``owners[g][k]`` is the output index of
    continuation k of group g (default: numbered in order). A continuation whose group has an
    empty prompt cannot have its first token predicted; it is skipped, as a plain forward would.

    ``padding_free``: pack several groups per row (first-fit decreasing, rows of ``capacity``
    tokens, by default chosen by :func:`choose_rows`); otherwise one group per row.
    """
    sizes = [len(p) + sum(len(c) for c in conts) for p, conts in groups]
    if owners is None:
        owners, k = [], 0
        for _, conts in groups:
            owners.append(list(range(k, k + len(conts))))
            k += len(conts)
    num_outputs = 1 + max((o for row in owners for o in row), default=-1)
    if padding_free and groups:
        rows = choose_rows(sizes, capacity, attention_cost)
        rows.sort(key=lambda r: min(r))  # deterministic, roughly dataset order
    else:
        rows = [[g] for g in range(len(groups))]
    L = max((sum(sizes[g] for g in r) for r in rows), default=1)
    R = max(1, len(rows))
    ids = torch.full((R, L), pad_id, dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    grp = torch.full((R, L), -1, dtype=torch.long)
    br = torch.full((R, L), -1, dtype=torch.long)  # padding: its own "branch", visible only to padding
    src: list[int] = []
    labels: list[int] = []
    owner: list[int] = []
    label_pos: list[int] = []
    for r, members in enumerate(rows):
        col = 0
        for g in members:
            prompt, conts = groups[g]
            P = len(prompt)
            if P:
                ids[r, col:col + P] = torch.tensor(prompt, dtype=torch.long)
                pos[r, col:col + P] = torch.arange(P)
                grp[r, col:col + P] = g
                br[r, col:col + P] = 0
            last_prompt = r * L + col + P - 1
            col += P
            for k, cont in enumerate(conts):
                n = len(cont)
                if n == 0:
                    continue
                ids[r, col:col + n] = torch.tensor(cont, dtype=torch.long)
                pos[r, col:col + n] = torch.arange(P, P + n)
                grp[r, col:col + n] = g
                br[r, col:col + n] = k + 1
                start = r * L + col
                preds = ([last_prompt] if P else []) + list(range(start, start + n - 1))
                src.extend(preds)
                labels.extend(cont if P else cont[1:])
                owner.extend([owners[g][k]] * len(preds))
                label_pos.extend(range(n - len(preds), n))
                col += n
    br[grp < 0] = -1
    return PackedLayout(ids, pos, grp, br, torch.tensor(src, dtype=torch.long),
                        torch.tensor(labels, dtype=torch.long), torch.tensor(owner, dtype=torch.long),
                        torch.tensor(label_pos, dtype=torch.long), num_outputs, int(sum(sizes)))


def split_rows(batch: SequenceBatch) -> list[tuple[Tokens, Tokens]]:
    """(prompt, response) token lists of each row: response = the loss-masked span, prompt = before it."""
    out = []
    n_real = batch.attention_mask.sum(-1).tolist()
    has = batch.loss_mask.any(-1).tolist()
    first = batch.loss_mask.float().argmax(-1).tolist()
    ids = batch.input_ids.tolist()
    n_labels = batch.loss_mask.sum(-1).tolist()
    for i, row in enumerate(ids):
        n = int(n_real[i])
        s = int(first[i]) if has[i] else n
        if n_labels[i] != n - s or (n < len(row) and batch.attention_mask[i, :n].sum() != n):
            raise ValueError(f"row {i}: the layout needs right padding and one response span at the end "
                             "of each row")
        out.append((row[:s], row[s:n]))
    return out


def pair_groups(batch: PreferenceBatch) -> list[tuple[Tokens, list[Tokens]]] | None:
    """``(prompt, [chosen, rejected])`` per pair, or None if some pair's two rows differ in the prompt."""
    chosen, rejected = split_rows(batch.chosen), split_rows(batch.rejected)
    groups = []
    for (pc, c), (pr, r) in zip(chosen, rejected):
        if pc != pr:
            return None
        groups.append((pc, [c, r]))
    return groups


def pack_pairs(batch: PreferenceBatch, pad_id: int, *, prefix_sharing: bool = True, padding_free: bool = True,
               capacity: int | None = None, attention_cost: float = 1 / 768) -> PackedLayout:
    """Layout of B pairs whose outputs are ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]``.

    With ``prefix_sharing`` each pair's prompt appears once and both responses attend to it;
    without it (or when a pair's rows disagree on the prompt) chosen and rejected are two
    separate sequences, packed like any others.
    """
    B = len(batch)
    groups = pair_groups(batch) if prefix_sharing else None
    if groups is not None:
        return pack(groups, pad_id, padding_free=padding_free, capacity=capacity,
                    owners=[[i, B + i] for i in range(B)], attention_cost=attention_cost)
    rows = split_rows(batch.chosen) + split_rows(batch.rejected)
    return pack([(p, [r]) for p, r in rows], pad_id, padding_free=padding_free, capacity=capacity,
                attention_cost=attention_cost)


def pack_sequences(batch: SequenceBatch, pad_id: int, *, padding_free: bool = True,
                   capacity: int | None = None, attention_cost: float = 1 / 768) -> PackedLayout:
    """Layout of a SequenceBatch's rows (outputs in row order), without padding when ``padding_free``."""
    return pack([(p, [r]) for p, r in split_rows(batch)], pad_id, padding_free=padding_free, capacity=capacity,
                attention_cost=attention_cost)


def pack_groups(prompt_ids: list[Tokens], responses: list[Tokens], pad_id: int, *, prefix_sharing: bool = True,
                padding_free: bool = True, capacity: int | None = None,
                attention_cost: float = 1 / 768) -> PackedLayout:
    """Layout of N (prompt, response) rows whose outputs are the rows in order; with
    ``prefix_sharing`` rows with the same prompt (e.g. the k samples of an online rollout) share
    one copy of it."""
    if not prefix_sharing:
        return pack([(p, [r]) for p, r in zip(prompt_ids, responses)], pad_id, padding_free=padding_free,
                    capacity=capacity, attention_cost=attention_cost)
    index: dict[tuple[int, ...], int] = {}
    groups: list[tuple[Tokens, list[Tokens]]] = []
    owners: list[list[int]] = []
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        g = index.setdefault(tuple(p), len(groups))
        if g == len(groups):
            groups.append((list(p), []))
            owners.append([])
        groups[g][1].append(r)
        owners[g].append(i)
    return pack(groups, pad_id, padding_free=padding_free, capacity=capacity, owners=owners,
                attention_cost=attention_cost)
