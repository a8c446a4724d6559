"""Import a database of the old FabOMatic (Flask/SQLAlchemy) backend.

``import_database(path)`` reads the old SQLite file read-only (``mode=ro``), checks that it really is a FabOMatic
database (any schema from 0.0.x to 1.0.x: columns added by later Alembic revisions are optional) and brings
everything over in one transaction. Nothing is written when the file is rejected or when the import fails half-way.

Modules, in the order the data flows:

* ``source``: the old file (opened read-only, schema checked, its values parsed);
* ``run``: the report and the state the steps share (old id -> pk maps);
* the steps, one module per group: ``people`` (roles, members, cards), ``machines`` (machine types, machines,
  authorizations, maintenance plans), ``history`` (interventions, uses, unknown cards, boards) and ``counters``
  (maintenance counters, meters rebased on the history);
* ``orchestrator``: ``import_database``, the steps in order in one transaction.

Mapping rules (also in the README, "Importing from FabOMatic"):

* Old primary keys are kept in the ``legacy_id`` fields, so a second run finds every row again and creates nothing.
  Machines keep their ids (the boards are configured with them); authorizations are unique per member × machine and
  cards per UID.
* Roles and machine types are matched by name first (``manage.py bootstrap`` creates "admins", "Fab Staff",
  "Fab Users", "Anonymous" and "Default type"); a matched row takes the old flags/settings once, when it is linked.
* The old "Anonymous" user is mapped to ``Member.objects.anonymous()``. A user whose e-mail already belongs to a member
  that was not imported (typically the first admin created by ``bootstrap``) is merged into that member.
* Old timestamps are epoch floats; they become aware UTC datetimes.
* Maintenance: the old backend summed the closed uses started after the latest intervention of each plan item; this
  backend counts on the machine's hour meter. ``done_at_hours`` of every imported plan is set so that
  ``hours_since`` equals the old value, and ``Intervention.machine_hours`` is the meter value implied at that time:
  the final meter minus the hours of the closed uses that started after the intervention (never below 0).
"""

from .orchestrator import import_database
from .run import ImportReport, Tally
from .source import LegacyImportError

__all__ = ["ImportReport", "LegacyImportError", "Tally", "import_database"]
