-- The settlement state machine (metering/states.py) in the database: each
-- final state carries what it means, so a record that breaks the rules fails
-- its write instead of being kept.
--   1 PENDING, 2 SETTLED, 3 RELEASED, 4 EXPIRED, 5 REJECTED
ALTER TABLE metering.usage
  -- settled_at is set exactly when the record left PENDING
  ADD CONSTRAINT usage_settled_at_when_final CHECK ((settlement = 1) = (settled_at IS NULL)),
  -- only a SETTLED record paid a fee and a provider
  ADD CONSTRAINT usage_paid_only_when_settled CHECK (settlement = 2 OR (fee_micros = 0 AND provider_micros = 0)),
  -- a cost is SETTLED, never RELEASED; a zero cost is RELEASED, never SETTLED
  ADD CONSTRAINT usage_settled_has_cost CHECK (settlement <> 2 OR cost_micros > 0),
  ADD CONSTRAINT usage_released_costs_nothing CHECK (settlement <> 3 OR cost_micros = 0),
  ADD CONSTRAINT usage_amounts_not_negative CHECK (fee_micros >= 0 AND provider_micros >= 0 AND attempts >= 0);
