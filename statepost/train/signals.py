"""Signals: what a method applies at each state. ``loss, metrics = signal(policy, batch)``.

The loop first calls ``batch = signal.prepare(batch)`` on every sampled batch: the signal's say in
which completion tokens carry signal (the reward signal computes rewards and advantages there and
leaves out the rows that have none). Every loss is a mean over the prepared batch's completion
tokens (the loop weights micro-batches by their token counts, so a step optimises the mean over all
its completion tokens; a step with none left makes no update). A signal is built
from its own branch of the config (``signal.type`` and that type's keys, defaults from the schema)
plus the extra models it declares in :data:`statepost.train.registry.SIGNALS`.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch


from .batch import StateBatch
from .logprobs import completion_states, completion_token_logprobs, entropy, token_divergence, token_logprobs

ADV_EPS = 1e-4  # added to a group's reward std before dividing (not a config key)


class Signal:
    """What the loop calls on a signal; a signal with nothing to prepare inherits ``prepare``."""

    def prepare(self, batch: StateBatch) -> StateBatch:
        return batch


class NLLSignal(Signal):
    """Mean next-token NLL of a target token at each completion state. Metrics ``nll``, ``token_acc``.

    Without a teacher the target is the state's own next token: the gold one at dataset states (SFT), the sampled
    one at learner states. With ``teacher`` (frozen, scored under no grad) it is the teacher's most likely next
    token (hard distillation): a token at every state, also where no gold token exists, the learner's own
    prefixes. Then ``token_acc`` is the policy's agreement with that target, and ``teacher_agree`` how often it is
    the state's own next token (at dataset states: the teacher's agreement with the gold solution).
    """

    def __init__(self, teacher=None):
        self.teacher = frozen(teacher) if teacher is not None else None

    def __call__(self, policy, batch: StateBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.teacher is not None:
            return self._teacher_targets(policy, batch)

        def per_state(logits, y):  # the differentiated term first: the backward's recompute stops after it
            nll = torch.nn.functional.cross_entropy(logits, y, reduction="none")
            with torch.no_grad():
                return nll, (logits.argmax(-1) == y).float()

        nll, hit = completion_states(policy, batch).map(per_state)  # [N] each, in chunks of states
        if nll.numel() == 0:  # e.g. every learner sample filtered out: zero loss, zero gradient
            return nll.sum() * 0.0, {"nll": 0.0, "token_acc": 0.0}
        nll = nll.mean()
        return nll, {"nll": float(nll.detach()), "token_acc": float(hit.mean())}

    def _teacher_targets(self, policy, batch: StateBatch):
        s = completion_states(policy, batch)
        t = frozen_states(self.teacher, batch)

        def per_state(logits, y, teacher_hidden):
            with torch.no_grad():
                target = t.logits(teacher_hidden).argmax(-1)
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            with torch.no_grad():
                return nll, (logits.argmax(-1) == target).float(), (target == y).float()

        nll, hit, agree = s.map(per_state, t.hidden)
        if nll.numel() == 0:
            return nll.sum() * 0.0, {"nll": 0.0, "token_acc": 0.0, "teacher_agree": 0.0}
        nll = nll.mean()
        return nll, {"nll": float(nll.detach()), "token_acc": float(hit.mean()), "teacher_agree": float(agree.mean())}


def frozen(model):
    """``model`` in eval mode with no parameter requiring grad: a teacher or reference scores states, never learns."""
    model.eval()
    model.requires_grad_(False)
    return model


def frozen_states(model, batch: StateBatch):
    """The completion states of ``batch`` under a frozen ``model``, moved to the batch's device, under no grad."""
    device = batch.input_ids.device
    try:
        mdev = next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        mdev = device
    if mdev != device:
        model.to(device)
    model.eval()
    with torch.no_grad():
        return completion_states(model, batch)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _model_dir(tok) -> str:
    return str(getattr(tok, "name_or_path", "") or "<unnamed tokenizer>")


def check_same_tokenizer(student_tok, teacher_tok, student_dir=None, teacher_dir=None) -> None:
    """Raise ``ValueError`` unless the two tokenizers map the same strings to the same ids.

    Compares ``get_vocab()`` (including added tokens) and the special tokens (eos, pad, bos, unk
    and the additional special tokens). The message names both model directories and the first
    differing token. Distillation compares distributions id by id, so any difference is fatal.
    """
    sdir = str(student_dir) if student_dir is not None else _model_dir(student_tok)
    tdir = str(teacher_dir) if teacher_dir is not None else _model_dir(teacher_tok)
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        for token in sorted(set(sv) | set(tv)):
            if sv.get(token) != tv.get(token):
                raise ValueError(
                    f"teacher and student tokenizers differ: token {token!r} has id {sv.get(token)} in the "
                    f"student ({sdir}) but {tv.get(token)} in the teacher ({tdir}) (vocab sizes {len(sv)} vs "
                    f"{len(tv)}); distillation needs the same vocabulary"
                )
    for attr in ("eos_token", "pad_token", "bos_token", "unk_token"):
        a, b = getattr(student_tok, attr, None), getattr(teacher_tok, attr, None)
        if str(a) != str(b):
            raise ValueError(
                f"teacher and student tokenizers differ: {attr} is {a!r} in the student ({sdir}) but "
                f"{b!r} in the teacher ({tdir})"
            )
    sa = [str(t) for t in (getattr(student_tok, "additional_special_tokens", None) or [])]
    ta = [str(t) for t in (getattr(teacher_tok, "additional_special_tokens", None) or [])]
    if sa != ta:
        diff = next((x for x, y in zip(sa, ta) if x != y), (sa + ta)[min(len(sa), len(ta))])
        raise ValueError(
            f"teacher and student tokenizers differ: additional special token {diff!r} (student {sdir}: "
            f"{len(sa)} tokens, teacher {tdir}: {len(ta)})"
        )


class TeacherKLSignal(Signal):
    """Distillation: per-token divergence to a teacher at every completion state.

    ``signal_cfg``: ``direction`` (reverse | forward | jsd), ``beta`` (jsd), ``estimator``:

    * ``full``: the exact divergence over the vocabulary at each state; the gradient flows through
      the student's distribution only (the states are not differentiated, as in GKD).
    * ``sampled`` (reverse only): ``mean(stopgrad(log p_s(y) - log p_t(y)) * log p_s(y))``
      over the sampled tokens y, an unbiased, noisier estimate of the ``full`` reverse-KL gradient,
      valid only for fresh student samples at temperature 1.

    ``teacher`` is put in eval mode and frozen; it scores the same states under no grad. Metrics:
    ``kl`` (exact, per completion token; reverse for ``sampled``), ``kl_sampled`` (sampled only),
    ``entropy`` (student), ``teacher_nll`` (of the realised tokens), ``teacher_time_s`` (the teacher's
    trunk; its head runs with the student's, chunk by chunk), ``completion_tokens``.
    """

    def __init__(self, signal_cfg: dict, teacher):
        # the schema holds the values (direction, estimator, beta's range), checks.run_checks their pairings
        self.direction, self.estimator = signal_cfg["direction"], signal_cfg["estimator"]
        self.beta = float(signal_cfg["beta"]) if self.direction == "jsd" else None  # jsd's weight; no other has one
        self.teacher = frozen(teacher)

    def __call__(self, policy, batch: StateBatch):
        device = batch.input_ids.device
        # the N completion states' hidden states [N, H]; logits only chunk by chunk, in per_state
        s = completion_states(policy, batch)
        _sync(device)
        t0 = time.perf_counter()
        t = frozen_states(self.teacher, batch)
        _sync(device)
        teacher_time = time.perf_counter() - t0
        n_tok = int(s.targets.numel())
        if t.vocab_size != s.vocab_size:
            raise ValueError(
                f"teacher_kl: teacher logits {(n_tok, t.vocab_size)} and student logits {(n_tok, s.vocab_size)} "
                "differ (different vocabulary sizes?)"
            )
        full = self.estimator == "full"

        def per_state(logits, y, teacher_hidden):  # [n, V] student logits -> [n] terms and metrics
            tl = t.logits(teacher_hidden)
            # the differentiated term first: the backward's recompute of a chunk stops after it
            term = token_divergence(logits, tl, self.direction, self.beta) if full else token_logprobs(logits, y)
            with torch.no_grad():
                ent, lt_y = entropy(logits), token_logprobs(tl, y)
                if full:
                    return term, ent, lt_y
                return term, ent, lt_y, token_divergence(logits, tl, "reverse")

        out = s.map(per_state, t.hidden)
        metrics = {"teacher_time_s": teacher_time, "completion_tokens": float(n_tok)}
        if n_tok == 0:  # e.g. a filtered-empty batch: zero loss, zero gradient
            metrics.update(kl=0.0, entropy=0.0, teacher_nll=0.0)
            return out[0].sum() * 0.0, metrics
        ent, lt_y = out[1], out[2]
        if full:
            loss = out[0].mean()
            kl_value = float(loss.detach())
        else:
            ls_y = out[0]
            logratio = (ls_y - lt_y).detach()
            loss = (logratio * ls_y).mean()
            kl_value = float(out[3].mean())
            metrics["kl_sampled"] = float(logratio.mean())
        metrics.update(kl=kl_value, entropy=float(ent.mean()), teacher_nll=float(-lt_y.mean()))
        return loss, metrics


def group_advantages(rewards, group_size: int, normalize_std: bool = True, eps: float = ADV_EPS):
    """GRPO advantages of consecutive groups of ``group_size`` rewards.

    ``A_i = r_i - mean(group)``, divided by ``std(group) + eps`` when ``normalize_std`` (the
    sample standard deviation, n-1, as TRL's GRPO; a group of one has advantage 0). A group whose
    rewards are all equal gets advantage exactly 0. Returns ``(advantages [N], zero_var [N/G] bool)``.
    """
    r = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
    if group_size < 1 or r.numel() % group_size:
        raise ValueError(f"group_advantages: {r.numel()} rewards do not split into groups of {group_size}")
    groups = torch.arange(r.numel()) // group_size
    return group_advantages_by_id(r, groups, normalize_std, eps)


def group_advantages_by_id(rewards, groups, normalize_std: bool = True, eps: float = ADV_EPS):
    """As :func:`group_advantages` with explicit group ids (groups may differ in size)."""
    r = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
    g = torch.as_tensor(groups).reshape(-1).to(r.device)
    _, inv = torch.unique(g, return_inverse=True)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(n_groups, device=r.device).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros(n_groups, device=r.device).index_add_(0, inv, r)
    mean = total / count
    centred = r - mean[inv]
    sq = torch.zeros(n_groups, device=r.device).index_add_(0, inv, centred**2)
    zero_var = sq == 0
    adv = torch.where(zero_var[inv], torch.zeros_like(r), centred)
    if normalize_std:
        std = torch.sqrt(sq / (count - 1).clamp_min(1.0))
        adv = adv / (std[inv] + eps)
    return adv, zero_var


class RewardSignal(Signal):
    """GRPO-style policy gradient with group-normalised advantages (token-level mean, as DAPO / TRL "dapo").

    ``signal_cfg``: ``reward`` (gsm8k), ``answer_mode``, ``format_reward``, ``normalize_std``,
    ``clip_eps``, ``kl_coef``. ``reference``: the frozen init model; needed when ``kl_coef > 0``,
    and whenever given it yields the ``kl_to_init`` metric.

    Rewards come from the grades the state source gave each completion (``extras["correct"]``, under the
    ``answer_mode`` the registry gives the source, and ``extras["formatted"]``); groups are ``extras["group"]``.
    Per token:
    ``-min(r*A, clip(r, 1-eps, 1+eps)*A)`` with ``r = exp(logp - old_logp)``, where ``old_logp`` is
    ``extras["old_logprobs"]`` (recorded at sampling time when a rollout batch is reused), else
    ``logp.detach()``, so ``r == 1`` and the gradient is REINFORCE with the group baseline. Plus
    ``kl_coef`` times the k3 estimate ``exp(ref - logp) - (ref - logp) - 1`` of KL(policy || ref).

    Metrics: ``reward``, ``accuracy``, ``zero_var_frac`` (groups with all-equal rewards),
    ``completion_len``, ``entropy``, ``clip_frac``, ``kl_to_init``, ``reward_time_s``,
    ``adv_abs_mean``, ``completion_tokens``.
    """

    def __init__(self, signal_cfg: dict, reference=None):
        # the schema holds the values; the registry passes the reference when kl_coef > 0 (SIGNALS["reward"].models)
        self.format_reward = float(signal_cfg["format_reward"])
        self.normalize_std = bool(signal_cfg["normalize_std"])
        self.clip_eps = float(signal_cfg["clip_eps"])
        self.kl_coef = float(signal_cfg["kl_coef"])
        self.reference = frozen(reference) if reference is not None else None

    def rewards(self, batch: StateBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rewards [B], correct [B])``: 1 for a correct answer, plus ``format_reward`` for a ``#### N`` line. The
        state source graded each completion (``extras["correct"]`` under this signal's answer mode,
        ``extras["formatted"]``); a batch may bring ``extras["rewards"]`` instead."""
        extras = batch.extras
        if "rewards" in extras:
            r = extras["rewards"].detach().float().cpu()
            c = extras.get("correct")
            return r, (c.detach().float().cpu() if c is not None else (r >= 1.0).float())
        if "correct" not in extras or "formatted" not in extras:
            raise ValueError("reward: the batch carries neither extras['correct'] and ['formatted'] (learner states "
                             "grade their samples) nor extras['rewards']")
        correct = extras["correct"].tolist()
        formatted = extras["formatted"].tolist()
        r = [c + self.format_reward if self.format_reward and f else c for c, f in zip(correct, formatted)]
        return torch.tensor(r, dtype=torch.float32), torch.tensor(correct, dtype=torch.float32)

    def prepare(self, batch: StateBatch) -> StateBatch:
        """Rewards and group advantages of a sampled batch (``extras["advantages"]``, per row).

        The rows of a group whose rewards are all equal have advantage 0: they carry no
        policy-gradient signal, so their tokens leave the completion mask and with it the token
        mean (the mean runs over the tokens that can learn, and a batch of only such groups has no
        token left: the loop then makes no update, so AdamW's momentum does not move the weights).
        """
        t0 = time.perf_counter()
        rewards, correct = self.rewards(batch)
        groups = batch.extras.get("group")
        if groups is None:
            raise ValueError("reward: the batch has no extras['group'] (learner states with samples_per_prompt)")
        groups = groups.detach().cpu()
        adv, zero_var = group_advantages_by_id(rewards, groups, self.normalize_std, ADV_EPS)
        row_zero_var = zero_var[torch.unique(groups, return_inverse=True)[1]]
        mask = batch.completion_mask * (~row_zero_var).to(batch.completion_mask)[:, None]
        metrics = {
            "reward": float(rewards.mean()) if rewards.numel() else 0.0,
            "accuracy": float(correct.mean()) if correct.numel() else 0.0,
            "zero_var_frac": float(zero_var.float().mean()) if zero_var.numel() else 0.0,
            "adv_abs_mean": float(adv.abs().mean()) if adv.numel() else 0.0,
            "completion_len": float((batch.completion_mask[:, 1:] > 0).sum(1).float().mean()),
            "reward_time_s": time.perf_counter() - t0,
        }
        extras = {**batch.extras, "advantages": adv, "rewards": rewards, "correct": correct}
        return replace(batch, completion_mask=mask, extras=extras, metrics={**batch.metrics, **metrics})

    def __call__(self, policy, batch: StateBatch):
        device = batch.input_ids.device
        if "advantages" not in batch.extras:  # called directly, not through the loop
            batch = self.prepare(batch)
        adv = batch.extras["advantages"]

        keep = batch.completion_mask[:, 1:] > 0  # [B, T-1]: the target of position t is token t+1
        row = keep.nonzero()[:, 0]  # batch row of each completion token

        def per_state(logits, y):  # [n, V] -> log-prob of the sampled token, entropy (recomputed only up to logp)
            logp = token_logprobs(logits, y)
            with torch.no_grad():
                return logp, entropy(logits)

        logp, ent = completion_states(policy, batch).map(per_state)  # [N] each, in chunks of states
        n_tok = int(logp.numel())
        adv_tok = adv.to(logp.device)[row]
        old = batch.extras.get("old_logprobs")
        if old is not None:
            old_logp = old.to(logp.device)[:, 1:][keep].to(logp.dtype)
        else:
            old_logp = logp.detach()
        ratio = torch.exp(logp - old_logp)
        unclipped = ratio * adv_tok
        clipped = torch.clamp(ratio, 1.0 - self.clip_eps, 1.0 + self.clip_eps) * adv_tok
        # no token left (every group all-equal): a zero loss with a zero gradient, not the mean of nothing
        loss = -torch.minimum(unclipped, clipped).mean() if n_tok else logp.sum() * 0.0
        metrics = {"completion_tokens": float(n_tok)}
        if self.reference is not None and n_tok:
            rdev = next(self.reference.parameters()).device
            if rdev != device:
                self.reference.to(device)
            with torch.no_grad():
                ref_logp = completion_token_logprobs(self.reference, batch)
            delta = ref_logp - (logp if self.kl_coef > 0 else logp.detach())
            k3 = torch.exp(delta) - delta - 1.0
            kl = k3.mean()
            if self.kl_coef > 0:
                loss = loss + self.kl_coef * kl
            metrics["kl_to_init"] = float(kl.detach())
        with torch.no_grad():
            low, high = 1.0 - self.clip_eps, 1.0 + self.clip_eps
            is_clipped = ((ratio < low) & (adv_tok < 0)) | ((ratio > high) & (adv_tok > 0))
            metrics.update(
                {k: batch.metrics[k] for k in ("reward", "accuracy", "zero_var_frac", "adv_abs_mean",
                                                 "completion_len", "reward_time_s")},
                entropy=float(ent.mean()) if n_tok else 0.0,
                clip_frac=float(is_clipped.float().mean()) if n_tok else 0.0,
            )
        return loss, metrics
