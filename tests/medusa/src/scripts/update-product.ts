/**
 * Update a product's title and one metadata key through updateProductsWorkflow:
 *
 *   npx medusa exec ./src/scripts/update-product.ts <handle> <title> <key> <value>
 *
 * Medusa merges the metadata it is given into the stored one. Then reads the
 * product back through Query and prints
 * `RESULT {"id","title","metadata","thumbnail","images":[url...],"variantThumbnails":[...]}`.
 */
import type { ExecArgs } from "@medusajs/framework/types"
import { ContainerRegistrationKeys } from "@medusajs/framework/utils"
import { updateProductsWorkflow } from "@medusajs/medusa/core-flows"
import { productByHandle, report } from "./lib"

export default async function updateProduct({ container, args }: ExecArgs) {
  const [handle, title, key, value] = args ?? []
  if (!handle || !title || !key) throw new Error("usage: update-product.ts <handle> <title> <key> <value>")
  const product = await productByHandle(container, handle)
  const { result } = await updateProductsWorkflow(container).run({
    input: { selector: { id: product.id }, update: { title, metadata: { [key]: value ?? "" } } },
  })
  if (!result.some((p) => p.id === product.id)) throw new Error("the workflow did not update it")
  const query = container.resolve(ContainerRegistrationKeys.QUERY)
  const { data: [read] } = await query.graph({
    entity: "product",
    fields: ["id", "title", "metadata", "thumbnail", "images.url", "images.rank",
             "variants.id", "variants.thumbnail"],
    filters: { id: product.id },
  })
  report({
    id: read.id,
    title: read.title,
    metadata: read.metadata,
    thumbnail: read.thumbnail ?? null,
    images: [...(read.images ?? [])].sort((a: any, b: any) => a.rank - b.rank).map((i: any) => i.url),
    variantThumbnails: [...(read.variants ?? [])].sort((a: any, b: any) => (a.id < b.id ? -1 : 1))
      .map((v: any) => v.thumbnail ?? null),
  })
}
