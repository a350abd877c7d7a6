"""Finding builders: ONE function per finding id, shared by the offline checks and the live hook.

A builder takes the numbers of one event (keyword arguments, plain Python
floats/ints) and returns the :class:`~diffdiag.model.Finding`: its severity,
score, message, location and evidence. The severity rule of an id is a
function of the event's numbers only, so the training hook's live line and
the final report say the same thing about the same event (docs/CONTRACT.md §3,
"Severity rules").

Modules: :mod:`.loss` (``loss_*``, ``ema_divergence``, ``grad_norm_spike``).
"""
