//! Scenario tests: feed one node messages and timers, assert the effects.
