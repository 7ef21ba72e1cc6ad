"""The Train pane, one idea per module:

  state.py     RunState, the keys each state offers, and the event that moves it on
  controls.py  the row of buttons, the processes field and the status line
  status.py    the pane's own words: the status line and how a run ended
  starting.py  before a start: continue or new run, and the memory warning
  pane.py      TrainPane: starts, attaches, follows and commands the run, shown in a RunView

Its styling is panes/train.tcss, as for every pane.
"""

from studio.panes.train.pane import SAMPLE_NOW, TrainPane
from studio.panes.train.state import RunState

__all__ = ["SAMPLE_NOW", "RunState", "TrainPane"]
