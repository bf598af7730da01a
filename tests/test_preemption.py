"""Tests of seg_jax.preemption: one SIGTERM handler per process, however watches nest."""

import os
import signal

from absl.testing import absltest

from seg_jax import preemption


class PreemptionWatchTest(absltest.TestCase):

  def test_signal_is_reached_and_the_handler_restored(self):
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionWatch() as watch:
      self.assertFalse(watch.reached(1))
      os.kill(os.getpid(), signal.SIGTERM)
      self.assertTrue(watch.reached(2))
    self.assertEqual(signal.getsignal(signal.SIGTERM), before)

  def test_nested_watch_installs_nothing_and_shares_the_notice(self):
    # A sweep's watch around the training loop's: one handler, one notice stops both.
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionWatch() as outer:
      handler = signal.getsignal(signal.SIGTERM)
      self.assertNotEqual(handler, before)
      with preemption.PreemptionWatch() as inner:
        self.assertEqual(signal.getsignal(signal.SIGTERM), handler)
        os.kill(os.getpid(), signal.SIGTERM)
        self.assertTrue(inner.reached(1))
      self.assertEqual(signal.getsignal(signal.SIGTERM), handler)
      self.assertTrue(outer.reached(0))
    self.assertEqual(signal.getsignal(signal.SIGTERM), before)

  def test_watch_entered_after_another_installs_its_own(self):
    with preemption.PreemptionWatch():
      pass
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionWatch() as watch:
      self.assertNotEqual(signal.getsignal(signal.SIGTERM), before)
      os.kill(os.getpid(), signal.SIGTERM)
      self.assertTrue(watch.reached(1))


if __name__ == "__main__":
  absltest.main()
