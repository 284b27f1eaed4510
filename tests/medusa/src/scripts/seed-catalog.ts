/**
 * Seed a small catalog through Medusa's own workflows, the way a store gets one:
 *
 *   npx medusa exec ./src/scripts/seed-catalog.ts [file_url]
 *
 * - 10 products, 2 variants each (option "Size"), 0-6 images each with
 *   metadata.alt, the product thumbnail being one of its images (or none);
 * - variant images (product_variant_product_image) and variant thumbnails;
 * - one product whose image Medusa then removed (updateProductsWorkflow with
 *   the image list minus one);
 * - two products soft-deleted with deleteProductsWorkflow.
 *
 * Image URLs live under `file_url` (default http://localhost:9000/medusa-media),
 * some keys with spaces and accents, percent-encoded as Medusa's file module
 * writes them. Prints a one-line JSON summary.
 */
import type { ExecArgs } from "@medusajs/framework/types"
import { ContainerRegistrationKeys } from "@medusajs/framework/utils"
import {
  batchVariantImagesWorkflow,
  createProductsWorkflow,
  deleteProductsWorkflow,
  updateProductVariantsWorkflow,
  updateProductsWorkflow,
} from "@medusajs/medusa/core-flows"

const NAMES = [
  "tote bag", "café mug", "crème shirt", "linen scarf", "wool hat",
  "canvas shoes", "leather belt", "silk tie", "cotton socks", "plain poster",
]
const IMAGES_PER_PRODUCT = [6, 5, 4, 6, 3, 4, 2, 5, 4, 0]

const slug = (name: string) =>
  name.normalize("NFD").replace(/[\u0300-\u036f]/g, "").replace(/\s+/g, "-")

export default async function seedCatalog({ container, args }: ExecArgs) {
  const started = Date.now()
  const logger = container.resolve(ContainerRegistrationKeys.LOGGER)
  const fileUrl = (args?.[0] || "http://localhost:9000/medusa-media").replace(/\/$/, "")
  const url = (name: string, n: number) =>
    `${fileUrl}/${encodeURIComponent(`${name}-${String(n).padStart(2, "0")}.jpg`)}`

  const { result: products } = await createProductsWorkflow(container).run({
    input: {
      products: NAMES.map((name, p) => {
        const images = Array.from({ length: IMAGES_PER_PRODUCT[p] }, (_, n) => ({
          url: url(name, n + 1),
          metadata: n % 3 === 2 ? {} : { alt: `${name}, view ${n + 1}`, size: 1000 + 10 * n },
        }))
        return {
          title: name.replace(/(^|\s)\S/g, (c) => c.toUpperCase()),
          handle: slug(name),
          status: "published" as const,
          images,
          // product 3's thumbnail is its third image; product 10 has none
          thumbnail: images.length ? images[p === 2 ? 2 : 0].url : undefined,
          metadata: { seeded_by: "safeops-tests", position: p },
          options: [{ title: "Size", values: ["S", "M"] }],
          variants: ["S", "M"].map((size) => ({
            title: `${name} ${size}`,
            sku: `${slug(name)}-${size}`.toUpperCase(),
            options: { Size: size },
            manage_inventory: false,
            prices: [{ amount: 10 + p, currency_code: "eur" }],
          })),
        }
      }),
    },
  })

  // Variant images and thumbnails: the first variant of every product with 3+
  // images gets images 2 and 3 and a thumbnail; the second variant of every
  // other such product gets its last image.
  let variantLinks = 0
  let variantThumbnails = 0
  const query = container.resolve(ContainerRegistrationKeys.QUERY)
  const { data: loaded } = await query.graph({
    entity: "product",
    fields: ["id", "images.id", "images.url", "images.rank", "variants.id", "variants.title"],
    filters: { id: products.map((p) => p.id) },
  })
  for (const [p, product] of loaded.entries()) {
    const images = [...(product.images ?? [])].sort((a: any, b: any) => a.rank - b.rank)
    const variants = [...(product.variants ?? [])].sort((a: any, b: any) =>
      a.title < b.title ? -1 : 1)
    if (images.length < 3) continue
    const first = variants[0]!
    await batchVariantImagesWorkflow(container).run({
      input: { variant_id: first.id, add: [images[1]!.id, images[2]!.id] },
    })
    variantLinks += 2
    await updateProductVariantsWorkflow(container).run({
      input: { selector: { id: first.id }, update: { thumbnail: images[1]!.url } },
    })
    variantThumbnails += 1
    if (p % 2 === 1) {
      await batchVariantImagesWorkflow(container).run({
        input: { variant_id: variants[1]!.id, add: [images[images.length - 1]!.id] },
      })
      variantLinks += 1
    }
  }

  // Medusa removes an image: the product is updated with its image list minus one.
  const scarf = loaded.find((p: any) => products.find((q) => q.id === p.id)?.handle === "linen-scarf")!
  const scarfImages = [...scarf.images!].sort((a: any, b: any) => a.rank - b.rank)
  await updateProductsWorkflow(container).run({
    input: {
      selector: { id: scarf.id },
      update: { images: scarfImages.filter((_, i) => i !== 4).map((img) => ({ id: img.id, url: img.url })) },
    },
  })

  // Two products deleted by Medusa (soft delete).
  const deleted = products.filter((p) => ["silk-tie", "cotton-socks"].includes(p.handle!))
  await deleteProductsWorkflow(container).run({ input: { ids: deleted.map((p) => p.id) } })

  const summary = {
    products: products.length,
    images: IMAGES_PER_PRODUCT.reduce((a, b) => a + b, 0),
    removedImages: 1,
    deletedProducts: deleted.map((p) => p.handle),
    variantLinks,
    variantThumbnails,
    ms: Date.now() - started,
  }
  logger.info(`seed-catalog: ${JSON.stringify(summary)}`)
  process.stdout.write(JSON.stringify(summary) + "\n")
}
