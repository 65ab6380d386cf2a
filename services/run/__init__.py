"""The top floor: local infrastructure (yields endpoints), the pipeline driver (takes endpoints), the run folder."""
