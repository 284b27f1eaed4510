// The Medusa backend safeops' tests run against: Medusa's own modules, migrations
// and workflows, on the database named by DATABASE_URL. No admin, no Redis: the
// in-memory event bus, cache, locking and workflow engine are Medusa's defaults.
import { defineConfig, loadEnv } from "@medusajs/framework/utils"

loadEnv(process.env.NODE_ENV || "development", process.cwd())

if (!process.env.DATABASE_URL) {
  throw new Error("DATABASE_URL is not set (postgresql://user@host:port/db)")
}

module.exports = defineConfig({
  projectConfig: {
    databaseUrl: process.env.DATABASE_URL,
    databaseLogging: false,
    http: {
      storeCors: process.env.STORE_CORS || "http://localhost:8000",
      adminCors: process.env.ADMIN_CORS || "http://localhost:9000",
      authCors: process.env.AUTH_CORS || "http://localhost:9000",
      jwtSecret: process.env.JWT_SECRET || "safeops-test-only",
      cookieSecret: process.env.COOKIE_SECRET || "safeops-test-only",
    },
  },
  admin: {
    disable: true,
  },
})
