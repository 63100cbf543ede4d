"""The distillation loss, summed over positions so that any split of a global batch adds up to the same value.

For each position t = 0..L-2 of a block (predicting token t+1):
    forward:  KL(P_teacher ‖ P_student) = Σ_v p_t (log p_t − log p_s), both at temperature T, times T²
    reverse:  KL(P_student ‖ P_teacher), also times T²
plus A · the student's cross-entropy of the actual next token at T = 1. With a trimmed student the teacher's logits
are restricted to the kept ids (`kept`, renormalized by the softmax) and the student uses its first K rows.
The step's loss is this sum over the B blocks of the step divided by B·(L−1).
"""

from __future__ import annotations

import torch  # the torch extra: distill imports this module once torch is known to be there

from surgery.training.distill import LOSSES


def kd_loss_sum(student_logits, teacher_logits, input_ids, *, temperature: float = 1.0, loss: str = "forward-kl",
                lm_weight: float = 0.0, kept=None):
    """Σ over blocks and positions 0..L-2 of the KD term (+ A·CE), a 0-dim float32 tensor with gradient.

    student_logits [b, L, V_s], teacher_logits [b, L, V_t] (no gradient), input_ids [b, L] in the student's ids;
    `kept` (a LongTensor of K teacher ids) for a trimmed student."""
    s = student_logits[:, :-1].float()
    t = teacher_logits[:, :-1].float()
    if kept is not None:
        t = t.index_select(-1, kept)
        s = s[..., : len(kept)]
    if temperature != 1:
        s, t = s / temperature, t / temperature
    if loss == "forward-kl":
        total = _forward_kl_sum(s, t) * temperature ** 2
    elif loss == "reverse-kl":
        log_s = torch.log_softmax(s, dim=-1)
        with torch.no_grad():
            log_t = torch.log_softmax(t, dim=-1)
        total = (log_s.exp() * (log_s - log_t)).sum() * temperature ** 2
    else:
        raise ValueError(f"loss {loss}: one of {', '.join(LOSSES)}")
    if lm_weight:
        labels = input_ids[:, 1:]
        z = student_logits[:, :-1].float()[..., : s.shape[-1]]  # at T = 1
        nll = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), labels.reshape(-1), reduction="sum")
        total = total + lm_weight * nll
    return total


class _ForwardKL(torch.autograd.Function):
    """Σ_rows (logsumexp(z) − p_t·z), with its gradient softmax(z) − p_t written out in place."""

    @staticmethod
    def forward(ctx, z, p_t):
        lse = torch.logsumexp(z, -1)
        ctx.save_for_backward(z, lse, p_t)
        return (lse - torch.linalg.vecdot(p_t, z)).sum()

    @staticmethod
    def backward(ctx, grad):
        z, lse, p_t = ctx.saved_tensors
        g = torch.sub(z, lse.unsqueeze(-1))
        g.exp_()
        g.sub_(p_t)
        g.mul_(grad)
        return g, None


def _forward_kl_sum(z, t):
    """Σ p_t (log p_t − log_softmax(z)) = Σ_rows (p_t·t − logsumexp(t)) + Σ_rows (logsumexp(z) − p_t·z): no
    log-softmax is materialized and the backward is written out (0.57 s instead of 0.80 s for 8 x 127 positions of a
    49k vocabulary on this machine, measured; a plain cross-entropy takes 0.31 s)."""
    with torch.no_grad():
        lse_t = torch.logsumexp(t, -1)
        p_t = torch.sub(t, lse_t.unsqueeze(-1))
        p_t.exp_()
        negative_entropy = torch.linalg.vecdot(p_t, t).sum() - lse_t.sum()
    return _ForwardKL.apply(z, p_t) + negative_entropy
