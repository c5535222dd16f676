"""Records at the edge of the system.

* ``records.errors`` -- the one error root and the dead-letter error types;
* ``records.transaction`` -- raw bytes -> a validated :class:`Transaction` (pure);
* ``records.schema`` -- the published Faust records (``UserFeatures``, ``DeadLetter``).

Importing this package imports none of them (and nothing of Faust).
"""
