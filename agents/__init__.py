"""Stream processors: decode -> validate -> update state -> publish."""
