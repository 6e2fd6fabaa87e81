-- The Pending Actions stream reads the notifications of its last minute by time.
CREATE INDEX approval_notifications_created ON approval_notifications (created_at);
