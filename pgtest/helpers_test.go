package pgtest_test

import (
	"context"

	"github.com/jackc/pgx/v5"
)

func pingDSN(ctx context.Context, dsn string) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	return c.Close(ctx)
}
