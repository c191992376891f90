"""Jobs that wire the rooms together: the encode job (pipeline), store -> analysis summaries, and the one audit orchestration."""
