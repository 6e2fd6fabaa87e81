-- An order canceled (by an admin or the merchant) or failed for good (a step out of retries):
-- its payment released (canceled, or refunded if captured) and the outcome kept like any other.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('accepted', 'rejected', 'out_of_stock', 'invalid', 'canceled', 'failed'));
