"""Release trains: one release across the fleet, stage by stage (see ``edgefleet.trains.model``)."""
