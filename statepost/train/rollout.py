"""Rollout sampling: a group's prompt prefilled once, finished rows dropped from the batch.

:func:`sample_groups` draws ``group_size`` completions for each of ``P`` prompts. It draws exactly
what ``model.generate(do_sample=True, ...)`` draws for the ``P * group_size`` rows (each prompt
repeated ``group_size`` times, left-padded), token for token under the same seed, and does less work
for it:

* **prefill once per prompt**: the prompts' KV cache is computed for the ``P`` distinct prompts, then
  repeated ``group_size`` times (``DynamicCache.batch_repeat_interleave``), where ``generate``
  prefills every row;
* **finished rows leave the batch**: a row that ended (EOS, a stop string) is removed from the cache
  (``DynamicCache.batch_select_indices``) and from every later forward, where ``generate`` keeps
  decoding it into padding until the last row ends.

The sampling itself is ``generate``'s: the same logits warpers (transformers' temperature and top-p
warpers, ``top_k`` off), softmax in float32, and one ``torch.multinomial`` over all ``P * G`` rows per
step (a dropped row's draw unused), so the random stream is consumed as ``generate`` consumes it.
On CPU a seed gives the same tokens as ``generate`` (``tests/test_rollout.py``; the toy DAG's
weights are bit-identical either way); on a GPU a kernel may round differently at
another batch size, which changes samples as run-to-run noise does, not their distribution. Under
FSDP, whose sharded forwards must run in lockstep on every process, rows are not dropped and every
process decodes until all are done (``all_done``), as ``generate(synced_gpus=True)`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper


def _warpers(temperature: float, top_p: float) -> LogitsProcessorList:
    """The warpers ``generate`` applies for ``do_sample=True, temperature, top_p, top_k=0``."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p, min_tokens_to_keep=1))
    return warpers


@torch.no_grad()
def sample_groups(
    model,
    prompt_ids: Sequence[Sequence[int]],
    group_size: int,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    stopped: Callable[[list[list[int]]], list[bool]] | None = None,
    device=None,
    all_done: Callable[[bool], bool] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """``group_size`` sampled completions per prompt, rows grouped by prompt (``P * G`` rows).

    Each completion runs up to and including its first EOS, or the token after which it is first
    ``stopped`` (a stop string: ``stopped(completions)`` answers for a list of token lists), or
    ``max_new_tokens``. Returns the completion token lists and, per row, whether it ended by
    ``stopped``. The model is run as it is (call it in eval mode); the caller seeds the global RNG.

    ``all_done`` (FSDP, whose sharded forwards every process must run as many times): called once per
    step with whether this process's rows have all ended, it returns whether every process's have.
    Ended rows then stay in the batch, fed the pad token, and decoding goes on until every process is
    done, as ``generate(synced_gpus=True)`` does; the prompts are still prefilled once per group.
    """
    if group_size < 1 or max_new_tokens < 1 or not prompt_ids:
        raise ValueError(f"sample_groups: {len(prompt_ids)} prompts, group_size {group_size}, "
                         f"max_new_tokens {max_new_tokens}")
    device = device if device is not None else next(model.parameters()).device
    G, n_rows = int(group_size), len(prompt_ids) * int(group_size)
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):  # left padding, as for generate
        input_ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attention_mask[i, width - len(p):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)
    input_ids, attention_mask, position_ids = (t.to(device) for t in (input_ids, attention_mask, position_ids))

    # prefill the distinct prompts, then give each of a prompt's G rows its own copy of the cache
    cache = DynamicCache(config=model.config)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].to(dtype=torch.float32).repeat_interleave(G, dim=0)
    del out
    if G > 1:
        cache.batch_repeat_interleave(G)
    attention_mask = attention_mask.repeat_interleave(G, dim=0)
    next_position = position_ids[:, -1].repeat_interleave(G) + 1

    warpers = _warpers(float(temperature), float(top_p))
    eos = int(eos_token_id)
    completions: list[list[int]] = [[] for _ in range(n_rows)]
    by_stop, ended = [False] * n_rows, [False] * n_rows
    active = torch.arange(n_rows, device=device)  # the row each batch entry holds
    # one multinomial over every row per step, as generate draws it: the batch's rows get this step's
    # distribution, a dropped row keeps a valid one (a one-hot at pad, or its last) and its draw is unused
    probs = torch.zeros((n_rows, logits.shape[-1]), dtype=torch.float32, device=device)
    probs[:, int(pad_token_id)] = 1.0
    for step in range(max_new_tokens):
        probs[active] = torch.softmax(warpers(None, logits), dim=-1)
        next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)[active]

        rows, tokens = active.tolist(), next_tokens.tolist()  # one host sync per step
        fresh = [j for j, row in enumerate(rows) if not ended[row]]  # entries whose row was still going
        for j in fresh:
            completions[rows[j]].append(tokens[j])
        going = [j for j in fresh if tokens[j] != eos]  # ... and did not end at EOS now
        held = stopped([completions[rows[j]] for j in going]) if stopped is not None else [False] * len(going)
        for j in fresh:
            ended[rows[j]] = True
        keep = []
        for j, h in zip(going, held):
            by_stop[rows[j]] = bool(h)
            if not h:
                ended[rows[j]] = False
                keep.append(j)
        done = not keep if all_done is None else all_done(not keep)
        if done or step == max_new_tokens - 1:
            break
        if all_done is not None:  # lockstep: every row stays; one that ended before this step is fed pad
            was_going = set(fresh)
            feed = [tok if j in was_going else int(pad_token_id) for j, tok in enumerate(tokens)]
            next_tokens = torch.tensor(feed, dtype=torch.long, device=device)
        elif len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            active, next_tokens = active[index], next_tokens[index]
            attention_mask, next_position = attention_mask[index], next_position[index]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
        out = model(input_ids=next_tokens[:, None], attention_mask=attention_mask,
                    position_ids=next_position[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].to(dtype=torch.float32)
        del out
        next_position = next_position + 1
    return completions, by_stop
