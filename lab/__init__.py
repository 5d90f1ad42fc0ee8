"""Lab harness: UML guest with the real sch_teql (see lab/uml.py)."""
