/**
 * Read the whole catalog back through Medusa's Query (query.graph), sorted so
 * that two reads of the same data are byte-identical:
 *
 *   npx medusa exec ./src/scripts/read-catalog.ts [out.json]
 *
 * Writes JSON to `out.json` (or stdout, between the Medusa log lines):
 *   {"products": [...live products...], "deleted": [...soft-deleted products...]}
 * Each product: id, handle, title, thumbnail, metadata, images (id, url, rank,
 * metadata, created_at, updated_at) by rank then id, variants (id, title,
 * thumbnail, the ids of `variants.images`, Medusa's union of the product's
 * general images and the variant's own) by id. Product and variant
 * `updated_at` are left out: a purge clears thumbnails and stamps them.
 */
import { writeFileSync } from "node:fs"
import type { ExecArgs } from "@medusajs/framework/types"
import { ContainerRegistrationKeys } from "@medusajs/framework/utils"

const FIELDS = [
  "id", "handle", "title", "thumbnail", "metadata", "deleted_at",
  "images.id", "images.url", "images.rank", "images.metadata",
  "images.created_at", "images.updated_at",
  "variants.id", "variants.title", "variants.thumbnail", "variants.images.id",
]

const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
const iso = (v: unknown) => (v instanceof Date ? v.toISOString() : v ?? null)

/** Keys in a fixed order at every level, so the text is stable. */
function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value && typeof value === "object" && !(value instanceof Date)) {
    return Object.fromEntries(Object.keys(value).sort()
      .map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]))
  }
  return value
}

function shape(product: any) {
  return {
    id: product.id,
    handle: product.handle,
    title: product.title,
    thumbnail: product.thumbnail ?? null,
    metadata: sortKeys(product.metadata ?? null),
    images: [...(product.images ?? [])]
      .sort((a: any, b: any) => a.rank - b.rank || byId(a, b))
      .map((img: any) => ({
        id: img.id, url: img.url, rank: img.rank, metadata: sortKeys(img.metadata ?? null),
        created_at: iso(img.created_at), updated_at: iso(img.updated_at),
      })),
    variants: [...(product.variants ?? [])].sort(byId).map((v: any) => ({
      id: v.id,
      title: v.title,
      thumbnail: v.thumbnail ?? null,
      images: (v.images ?? []).map((img: any) => img.id).sort(),
    })),
  }
}

export default async function readCatalog({ container, args }: ExecArgs) {
  const query = container.resolve(ContainerRegistrationKeys.QUERY)
  const { data: live } = await query.graph({ entity: "product", fields: FIELDS })
  const { data: all } = await query.graph({
    entity: "product", fields: FIELDS, withDeleted: true,
  })
  const catalog = {
    products: [...live].sort(byId).map(shape),
    deleted: all.filter((p: any) => p.deleted_at).sort(byId).map(shape),
  }
  const text = JSON.stringify(catalog, null, 1) + "\n"
  if (args?.[0]) writeFileSync(args[0], text)
  else process.stdout.write(text)
}
